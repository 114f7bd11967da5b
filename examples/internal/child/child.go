// Package child starts the peer processes of the examples and watches
// them: a child dies with its parent (on Linux), and its exit, whenever it
// comes, cancels the parent's work with an error that names it.
package child

import (
	"context"
	"fmt"
	"os"
	"os/exec"
)

// A Child is a process this one started.
type Child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the child has exited
	err  error         // then: nil if it exited with status 0
}

// Start starts exe with args, its output on this process's, as a child
// that dies with this process (on Linux) and whose exit calls cancel with
// an error that names it and says how it exited.
func Start(cancel context.CancelCauseFunc, name, exe string, args ...string) (*Child, error) {
	c := &Child{name: name, cmd: exec.Command(exe, args...), done: make(chan struct{})}
	c.cmd.Stdout, c.cmd.Stderr = os.Stdout, os.Stderr
	DieWithParent(c.cmd)
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
		cancel(fmt.Errorf("%s (pid %d) exited early: %v", c.name, c.cmd.Process.Pid, c.cmd.ProcessState))
	}()
	return c, nil
}

// Pid is the child's process id.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Wait waits for the child to exit (or for ctx to end) and says whether it
// failed.
func (c *Child) Wait(ctx context.Context) error {
	select {
	case <-c.done:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	if c.err != nil {
		return fmt.Errorf("%s (pid %d) failed: %w", c.name, c.cmd.Process.Pid, c.err)
	}
	return nil
}

// Stop kills the child if it is still running and waits for it to exit.
func (c *Child) Stop() {
	c.cmd.Process.Kill()
	<-c.done
}
