//go:build !linux

package child

import "os/exec"

// DieWithParent does nothing here (the parent-death signal is Linux's):
// the examples' children bound themselves with their own timeouts.
func DieWithParent(*exec.Cmd) {}
