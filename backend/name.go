package backend

import "fmt"

// MaxNameLen is the longest name accepted. POSIX names become files under
// /dev/shm (NAME_MAX 255, less "sem." and the suffixes the layers above
// append to a buffer's name for its own objects), so 128 leaves room.
const MaxNameLen = 128

// ValidateName returns nil for a valid name, and an error wrapping
// ErrInvalidName that says why otherwise.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("name is empty: %w", ErrInvalidName)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("name of %d bytes is longer than %d: %w", len(name), MaxNameLen, ErrInvalidName)
	}
	if name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("name %q starts with %q: %w", name, name[0], ErrInvalidName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' {
			continue
		}
		return fmt.Errorf("name %q has %q at %d (allowed: A-Z a-z 0-9 . _ -): %w", name, c, i, ErrInvalidName)
	}
	return nil
}
