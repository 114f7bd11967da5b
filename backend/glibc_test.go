package backend

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/heapipc/ipc/internal/testutil"
	"github.com/stretchr/testify/require"
)

// The C side of the interoperability test: it creates "pong" with sem_open
// (O_CREAT|O_EXCL), opens the Go-made "ping", says "ready", then answers
// each ping with a pong.
const glibcPeer = `#include <fcntl.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
	if (argc != 4) return 2;
	int rounds = atoi(argv[3]);
	sem_t *pong = sem_open(argv[2], O_CREAT | O_EXCL, 0600, 0);
	if (pong == SEM_FAILED) { perror("sem_open pong"); return 1; }
	sem_t *ping = sem_open(argv[1], 0);
	if (ping == SEM_FAILED) { perror("sem_open ping"); return 1; }
	printf("@ready\n");
	fflush(stdout);
	for (int i = 0; i < rounds; i++) {
		if (sem_wait(ping) != 0) { perror("sem_wait"); return 1; }
		if (sem_post(pong) != 0) { perror("sem_post"); return 1; }
	}
	int v = -1;
	sem_getvalue(ping, &v);
	printf("@done %d %d\n", rounds, v);
	fflush(stdout);
	return 0;
}
`

func TestGlibcSemaphoreInterop(t *testing.T) {
	if runtime.GOOS != "linux" || (runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64") {
		t.Skipf("the glibc layout is checked on 64-bit Linux only, not %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	if _, err := exec.LookPath(cc); err != nil {
		if _, err := exec.LookPath("gcc"); err != nil {
			t.Skipf("no C compiler (%s or gcc) on PATH: the glibc interoperability test needs one", cc)
		}
		cc = "gcc"
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "peer.c")
	bin := filepath.Join(dir, "peer")
	require.NoError(t, os.WriteFile(src, []byte(glibcPeer), 0o600))
	if out, err := exec.Command(cc, "-O2", "-o", bin, src, "-pthread").CombinedOutput(); err != nil {
		t.Fatalf("compiling the C peer: %v\n%s", err, out)
	}

	sems, _ := Semaphores(POSIX)
	pingName, pongName := testutil.Name(t), testutil.Name(t)
	ping, err := sems.Create(pingName, 0, SemOptions{})
	require.NoError(t, err)
	defer ping.Close()
	defer ping.Unlink()
	defer sems.Remove(pongName)

	const rounds = 5000
	cmd := exec.Command(bin, "/"+pingName, "/"+pongName, strconv.Itoa(rounds))
	child := startExternal(t, cmd)
	require.Equal(t, "ready", child.line(t))
	pong, err := sems.Open(pongName, SemOptions{})
	require.NoError(t, err, "Go opens a semaphore glibc created")
	defer pong.Close()

	ctx := testutil.Context(t, time.Minute)
	for i := 0; i < rounds; i++ {
		require.NoError(t, ping.Post())
		require.NoError(t, pong.Wait(ctx), "round %d", i)
	}
	require.Equal(t, "done 5000 0", child.line(t))
	require.NoError(t, child.wait())
	v, err := pong.Value()
	require.NoError(t, err)
	require.Equal(t, 0, v)
}
