package backend

import (
	"fmt"
	"strings"
)

// MaxNameLen is the longest name of a region (a buffer). The layers above
// name their own objects (semaphores, for instance) by appending a suffix of
// at most MaxObjectNameLen-MaxNameLen bytes to the region's name.
const MaxNameLen = 128

// MaxObjectNameLen is the longest name of a segment or semaphore. POSIX
// names become files under /dev/shm (NAME_MAX is 255, less "sem.").
const MaxObjectNameLen = 200

// ValidateName returns nil for a valid name, and an error wrapping
// ErrInvalidName that says why otherwise. A name may not start with
// "sem." (semPrefix), on any backend: POSIX segments are files in ShmDir
// named as the region, and POSIX semaphores files named "sem." and the
// semaphore's name, so a region "sem.X.heap" would be region X's heap
// semaphore (opening X would have removed it as a stale one).
func ValidateName(name string) error {
	if err := validateName(name, MaxNameLen); err != nil {
		return err
	}
	return notSemPrefixed(name)
}

// semPrefix starts the file name of every POSIX semaphore (as glibc names
// them); no segment's file may.
const semPrefix = "sem."

func notSemPrefixed(name string) error {
	if strings.HasPrefix(name, semPrefix) {
		return fmt.Errorf("name %q starts with %q (POSIX semaphores' files do): %w", name, semPrefix, ErrInvalidName)
	}
	return nil
}

// ValidateObjectName is ValidateName with the longer limit of segment and
// semaphore names.
func ValidateObjectName(name string) error { return validateName(name, MaxObjectNameLen) }

func validateName(name string, maxLen int) error {
	if name == "" {
		return fmt.Errorf("name is empty: %w", ErrInvalidName)
	}
	if len(name) > maxLen {
		return fmt.Errorf("name of %d bytes is longer than %d: %w", len(name), maxLen, ErrInvalidName)
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
