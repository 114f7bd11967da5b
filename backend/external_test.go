package backend

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// external is a non-Go child process whose "@" lines are read.
type external struct {
	cmd   *exec.Cmd
	lines chan string
	errb  bytes.Buffer
}

func startExternal(t *testing.T, cmd *exec.Cmd) *external {
	t.Helper()
	e := &external{cmd: cmd, lines: make(chan string, 16)}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &e.errb
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), "@"); ok {
				e.lines <- l
			}
		}
		close(e.lines)
	}()
	return e
}

func (e *external) line(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-e.lines:
		if !ok {
			t.Fatalf("%s exited early: %s", e.cmd.Path, e.errb.String())
		}
		return l
	case <-time.After(watchdog):
		t.Fatalf("no line from %s: %s", e.cmd.Path, e.errb.String())
	}
	return ""
}

func (e *external) wait() error { return e.cmd.Wait() }
