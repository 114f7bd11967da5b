// Package testutil holds what the test suites of heapipc share: unique
// object names, re-executing the test binary as a child process, and the
// leak check every TestMain runs.
package testutil

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	envRun   = "HEAPIPC_TEST_RUN"   // pid of the top test process
	envChild = "HEAPIPC_TEST_CHILD" // set in re-executed children
)

var (
	counter atomic.Int64
	runID   = func() string {
		if v := os.Getenv(envRun); v != "" {
			return v
		}
		return strconv.Itoa(os.Getpid())
	}()
)

// Prefix is what every name made by Name starts with in this test run
// (children share their parent's).
func Prefix() string { return "hipct." + runID + "." }

// Name returns a name unique to this test run, for a buffer, segment or
// semaphore. The leak check looks for objects with this prefix.
func Name(tb testing.TB) string {
	return fmt.Sprintf("%s%d", Prefix(), counter.Add(1))
}

// IsChild reports whether this process is a re-executed child.
func IsChild() bool { return os.Getenv(envChild) != "" }

// ChildOnly skips a test that only makes sense as a re-executed child.
func ChildOnly(t *testing.T) {
	t.Helper()
	if !IsChild() {
		t.Skip("helper process: runs only when a test re-executes the binary")
	}
}

var children = struct {
	sync.Mutex
	pids map[int]bool
}{pids: map[int]bool{}}

// Child is a re-executed test binary running one test function.
type Child struct {
	Cmd   *exec.Cmd
	out   *lockedBuffer
	lines *lineQueue
	done  chan struct{}
	err   error
}

// lineQueue holds the child's "@" lines until the test reads them; it
// never blocks the reader of the child's output, however many lines the
// child prints.
type lineQueue struct {
	mu     sync.Mutex
	q      []string
	closed bool
	ready  chan struct{} // signalled (non-blocking) on every change
}

func (l *lineQueue) push(s string) {
	l.mu.Lock()
	l.q = append(l.q, s)
	l.mu.Unlock()
	l.signal()
}

func (l *lineQueue) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.signal()
}

func (l *lineQueue) signal() {
	select {
	case l.ready <- struct{}{}:
	default:
	}
}

// pop returns the next line; ok is false once the child's output ended
// with nothing left.
func (l *lineQueue) pop(timeout <-chan time.Time) (line string, ok, timedOut bool) {
	for {
		l.mu.Lock()
		if len(l.q) > 0 {
			line = l.q[0]
			l.q = l.q[1:]
			l.mu.Unlock()
			return line, true, false
		}
		closed := l.closed
		l.mu.Unlock()
		if closed {
			return "", false, false
		}
		select {
		case <-l.ready:
		case <-timeout:
			return "", false, true
		}
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// StartChild re-executes the test binary to run the test named test (a
// function that calls ChildOnly), with env added ("KEY=value"). Lines the
// child prints to stdout that start with "@" are delivered by Line; all
// output is kept for failure messages. The child is killed at cleanup if
// it is still running.
func StartChild(tb testing.TB, test string, env ...string) *Child {
	tb.Helper()
	return StartChildFiles(tb, test, nil, env...)
}

// StartChildFiles is StartChild with extra open files for the child (fd 3
// onwards, as exec.Cmd.ExtraFiles).
func StartChildFiles(tb testing.TB, test string, files []*os.File, env ...string) *Child {
	tb.Helper()
	c, err := StartChildAttr(tb, test, files, nil, env...)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// StartChildAttr is StartChildFiles with the child's process attributes
// (nil: the defaults), which returns an error where the child could not
// be started (namespaces refused, say), for the caller to judge.
func StartChildAttr(tb testing.TB, test string, files []*os.File, attr *syscall.SysProcAttr, env ...string) (*Child, error) {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatalf("os.Executable: %v", err)
	}
	cmd := exec.Command(exe, "-test.run=^"+test+"$", "-test.count=1", "-test.timeout=120s", "-test.v")
	cmd.Env = append(os.Environ(), envChild+"=1", envRun+"="+runID)
	cmd.Env = append(cmd.Env, env...)
	cmd.ExtraFiles = files
	cmd.SysProcAttr = attr
	c := &Child{Cmd: cmd, out: &lockedBuffer{}, lines: &lineQueue{ready: make(chan struct{}, 1)}, done: make(chan struct{})}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = c.out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start child %s: %w", test, err)
	}
	children.Lock()
	children.pids[cmd.Process.Pid] = true
	children.Unlock()
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(c.out, line)
			if strings.HasPrefix(line, "@") {
				c.lines.push(strings.TrimPrefix(line, "@"))
			}
		}
		io.Copy(io.Discard, stdout)
		c.lines.close()
		c.err = cmd.Wait()
		close(c.done)
	}()
	tb.Cleanup(func() {
		select {
		case <-c.done:
		default:
			cmd.Process.Kill()
			<-c.done
		}
	})
	return c, nil
}

// Pid is the child's process id.
func (c *Child) Pid() int { return c.Cmd.Process.Pid }

// Line waits up to timeout for the child's next "@" line.
func (c *Child) Line(tb testing.TB, timeout time.Duration) string {
	tb.Helper()
	l, ok, timedOut := c.lines.pop(time.After(timeout))
	switch {
	case timedOut:
		tb.Fatalf("no line from child within %v; output:\n%s", timeout, c.out)
	case !ok:
		<-c.done
		tb.Fatalf("child exited (%v) before printing an expected line; output:\n%s", c.err, c.out)
	}
	return l
}

// Wait waits up to timeout for the child to exit and returns its error
// (nil for exit status 0). A child still running then is killed.
func (c *Child) Wait(tb testing.TB, timeout time.Duration) error {
	tb.Helper()
	select {
	case <-c.done:
	case <-time.After(timeout):
		c.Cmd.Process.Kill()
		<-c.done
		tb.Fatalf("child did not exit within %v; output:\n%s", timeout, c.out)
	}
	return c.err
}

// MustSucceed waits for the child and fails the test if it did not exit 0.
func (c *Child) MustSucceed(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	if err := c.Wait(tb, timeout); err != nil {
		tb.Fatalf("child failed: %v; output:\n%s", err, c.out)
	}
}

// Kill sends SIGKILL and reaps the child.
func (c *Child) Kill() {
	c.Cmd.Process.Kill()
	<-c.done
}

// Output is everything the child printed so far.
func (c *Child) Output() string { return c.out.String() }

// Say prints a line the parent can read with Line (from a child).
func Say(format string, args ...any) {
	fmt.Printf("@"+format+"\n", args...)
}

// Env returns an environment variable a child was started with, failing
// the test if it is missing.
func Env(t testing.TB, key string) string {
	t.Helper()
	v := os.Getenv(key)
	if v == "" {
		t.Fatalf("child: environment variable %s not set", key)
	}
	return v
}

// Context returns a context that ends with the test or after d.
func Context(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}
