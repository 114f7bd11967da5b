package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	ipc "github.com/heapipc/ipc"
)

// peerFlag is the hidden flag that makes the binary the peer process of
// a cross-process trial: ipcbench re-executes itself (os.Executable) with
// -ipcbench-peer=SPEC (the trial's spec in JSON) and the descriptors of
// pipes and sockets as fd 3 onwards. It is handled before anything else,
// so a test binary of this package can be the peer too.
const peerFlag = "-ipcbench-peer="

func init() {
	if len(os.Args) == 2 && strings.HasPrefix(os.Args[1], peerFlag) {
		os.Exit(peerMain(strings.TrimPrefix(os.Args[1], peerFlag)))
	}
}

// peerMain is the peer process: it makes its end of the trial, says
// "ready", runs it to the end and says "done BYTES SUM" (throughput) or
// "done N 0" (latency) on stdout. It gives up by itself after the spec's
// timeout, and dies with its parent (Linux).
func peerMain(arg string) int {
	var sp spec
	if err := json.Unmarshal([]byte(arg), &sp); err != nil {
		fmt.Fprintln(os.Stderr, "ipcbench peer: bad spec:", err)
		return 2
	}
	if sp.Timeout <= 0 {
		sp.Timeout = time.Minute
	}
	time.AfterFunc(sp.Timeout+5*time.Second, func() {
		fmt.Fprintln(os.Stderr, "ipcbench peer: timed out")
		os.Exit(3)
	})
	ctx, cancel := context.WithTimeout(context.Background(), sp.Timeout)
	defer cancel()
	if err := runPeer(ctx, &sp); err != nil {
		fmt.Fprintln(os.Stderr, "ipcbench peer:", err)
		return 1
	}
	return 0
}

func runPeer(ctx context.Context, sp *spec) (err error) {
	var e env
	if sp.Buffer != "" {
		if e.buf, err = ipc.Open(sp.Buffer, ipc.AttachOnly()); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, e.buf.Close()) }()
	}
	files := make([]*os.File, sp.Files)
	for i := range files {
		files[i] = os.NewFile(uintptr(3+i), "fd"+strconv.Itoa(3+i))
	}
	b, err := openB(ctx, e, sp, files, nil)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	var n int64
	var sum uint64
	if sp.Scenario == scenThroughput {
		n, sum, err = b.(drainer).drain()
	} else {
		n, err = b.(echoer).echo()
	}
	if err != nil {
		return err
	}
	fmt.Printf("done %d %d\n", n, sum)
	return nil
}

// peerProc is a running peer process.
type peerProc struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr lockedBuffer
	exited chan struct{}
	err    error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 64<<10 {
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.TrimSpace(l.b.String())
}

// startPeer re-executes this binary as the peer of sp with files as fd 3
// onwards.
func startPeer(sp *spec, files []*os.File) (*peerProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(sp)
	if err != nil {
		return nil, err
	}
	p := &peerProc{lines: make(chan string, 4), exited: make(chan struct{})}
	p.cmd = exec.Command(exe, peerFlag+string(js))
	p.cmd.ExtraFiles = files
	// A race-enabled binary sleeps a second before it exits unless told
	// not to; the peer's exit is on the run's critical path.
	p.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))
	p.cmd.Stderr = &p.stderr
	setParentDeath(p.cmd)
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start peer: %w", err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default: // nobody listens for more than two lines
			}
		}
		io.Copy(io.Discard, out)
		close(p.lines)
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// line waits for the peer's next line.
func (p *peerProc) line(ctx context.Context) (string, error) {
	select {
	case l, ok := <-p.lines:
		if ok {
			return l, nil
		}
		<-p.exited
		return "", p.failure(errors.New("exited early"))
	case <-ctx.Done():
		return "", p.failure(ctx.Err())
	}
}

func (p *peerProc) failure(err error) error {
	select {
	case <-p.exited:
		if p.err != nil {
			err = fmt.Errorf("%w (%v)", err, p.err)
		}
	default:
	}
	if s := p.stderr.String(); s != "" {
		return fmt.Errorf("peer process %d: %w: %s", p.cmd.Process.Pid, err, s)
	}
	return fmt.Errorf("peer process %d: %w", p.cmd.Process.Pid, err)
}

// wait waits up to timeout for the peer to exit, and kills it (by its
// pid) if it has not.
func (p *peerProc) wait(timeout time.Duration) error {
	select {
	case <-p.exited:
	case <-time.After(timeout):
		p.kill()
		return p.failure(fmt.Errorf("did not exit within %v", timeout))
	}
	if p.err != nil {
		return p.failure(p.err)
	}
	return nil
}

// kill kills the peer and waits for it.
func (p *peerProc) kill() {
	p.cmd.Process.Kill()
	<-p.exited
}

// parseDone reads "done N SUM".
func parseDone(line string) (n int64, sum uint64, err error) {
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "done" {
		return 0, 0, fmt.Errorf("peer said %q, want \"done N SUM\"", line)
	}
	if n, err = strconv.ParseInt(f[1], 10, 64); err == nil {
		sum, err = strconv.ParseUint(f[2], 10, 64)
	}
	return n, sum, err
}
