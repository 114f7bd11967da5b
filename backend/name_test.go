package backend

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	good := []string{"a", "Z", "0", "buf-1", "my.buffer_2", strings.Repeat("x", MaxNameLen), "a..b"}
	for _, n := range good {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", n, err)
		}
	}
	bad := []string{"", ".", "..", "../etc", "/x", "a/b", ".hidden", "-x", "a b", "a\x00b", "é", "a:b",
		strings.Repeat("x", MaxNameLen+1), "sem*"}
	for _, n := range bad {
		if err := ValidateName(n); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", n, err)
		}
	}
	if err := ValidateObjectName(strings.Repeat("y", MaxObjectNameLen)); err != nil {
		t.Errorf("object name of %d bytes: %v", MaxObjectNameLen, err)
	}
	if err := ValidateObjectName(strings.Repeat("y", MaxObjectNameLen+1)); !errors.Is(err, ErrInvalidName) {
		t.Errorf("object name of %d bytes: %v, want ErrInvalidName", MaxObjectNameLen+1, err)
	}
}

func TestInvalidNamesTouchNothing(t *testing.T) {
	for _, k := range Kinds {
		segs, _ := Segments(k)
		sems, _ := Semaphores(k)
		for _, n := range []string{"", "..", "../x", "a/b", ".x"} {
			if _, err := segs.Create(n, 4096, 0, nil); !errors.Is(err, ErrInvalidName) {
				t.Errorf("%s Create(%q): %v", k, n, err)
			}
			if _, err := segs.Attach(n); !errors.Is(err, ErrInvalidName) {
				t.Errorf("%s Attach(%q): %v", k, n, err)
			}
			if err := segs.Remove(n); !errors.Is(err, ErrInvalidName) {
				t.Errorf("%s Remove(%q): %v", k, n, err)
			}
			if _, err := sems.Create(n, 0, SemOptions{}); !errors.Is(err, ErrInvalidName) {
				t.Errorf("%s sem Create(%q): %v", k, n, err)
			}
			if _, err := sems.Open(n, SemOptions{}); !errors.Is(err, ErrInvalidName) {
				t.Errorf("%s sem Open(%q): %v", k, n, err)
			}
			if _, err := OpenRegion(n, RegionConfig{Segments: k, Size: 1 << 16}, nil); !errors.Is(err, ErrInvalidName) {
				t.Errorf("%s OpenRegion(%q): %v", k, n, err)
			}
		}
	}
}

func TestParseKind(t *testing.T) {
	for _, k := range Kinds {
		got, err := ParseKind(string(k))
		if err != nil || got != k {
			t.Errorf("ParseKind(%q) = %v, %v", k, got, err)
		}
	}
	if _, err := ParseKind("shm"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("ParseKind(shm) = %v", err)
	}
	if _, err := Segments("nope"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Segments(nope) = %v", err)
	}
}
