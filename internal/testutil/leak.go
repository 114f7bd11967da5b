package testutil

import (
	"fmt"

	"github.com/heapipc/ipc/internal/sys"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// Main runs the tests of a package that creates shared objects and fails
// the run if any object this run created is left behind: a /dev/shm file
// with the run's prefix (or a temporary file of this process or its
// children), or a SysV segment or semaphore set created by this process or
// its children that did not exist before. Leaked objects are listed and
// removed. Children (re-executed binaries) skip the check: their parent
// owns the cleanup.
func Main(m *testing.M) {
	if IsChild() {
		os.Exit(m.Run())
	}
	sweepDeadRuns()
	before := sysvSnapshot()
	code := m.Run()
	if leaks := findLeaks(before); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the tests left %d shared objects behind (now removed):\n", len(leaks))
		for _, l := range leaks {
			fmt.Fprintf(os.Stderr, "\t%s\n", l)
		}
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func ourPids() map[int]bool {
	children.Lock()
	defer children.Unlock()
	p := map[int]bool{os.Getpid(): true}
	for pid := range children.pids {
		p[pid] = true
	}
	return p
}

// sysvObject is a row of /proc/sysvipc/{shm,sem}.
type sysvObject struct {
	class string // "shm" or "sem"
	key   int64
	id    int
	cpid  int // shm only
	nsems int // sem only
}

func (o sysvObject) String() string {
	return fmt.Sprintf("SysV %s key %#x id %d", o.class, uint32(o.key), o.id)
}

func readSysV(class string) []sysvObject {
	b, err := os.ReadFile("/proc/sysvipc/" + class)
	if err != nil {
		return nil
	}
	var out []sysvObject
	lines := strings.Split(string(b), "\n")
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		key, _ := strconv.ParseInt(f[0], 10, 64)
		id, _ := strconv.Atoi(f[1])
		o := sysvObject{class: class, key: key, id: id}
		if class == "shm" {
			o.cpid, _ = strconv.Atoi(f[4])
		} else {
			o.nsems, _ = strconv.Atoi(f[3])
		}
		out = append(out, o)
	}
	return out
}

func sysvSnapshot() map[string]bool {
	seen := map[string]bool{}
	for _, c := range []string{"shm", "sem"} {
		for _, o := range readSysV(c) {
			seen[o.String()] = true
		}
	}
	return seen
}

func findLeaks(before map[string]bool) []string {
	pids := ourPids()
	var leaks []string
	if ents, err := os.ReadDir("/dev/shm"); err == nil {
		for _, e := range ents {
			n := e.Name()
			ours := strings.HasPrefix(strings.TrimPrefix(n, "sem."), Prefix())
			if rest, ok := strings.CutPrefix(n, ".hipc-tmp."); ok {
				pid, _ := strconv.Atoi(strings.SplitN(rest, ".", 2)[0])
				ours = pids[pid]
			}
			if ours {
				leaks = append(leaks, "/dev/shm/"+n)
				os.Remove("/dev/shm/" + n)
			}
		}
	}
	for _, o := range readSysV("shm") {
		if !before[o.String()] && pids[o.cpid] {
			leaks = append(leaks, o.String())
			removeSysV(o)
		}
	}
	for _, o := range readSysV("sem") {
		if before[o.String()] {
			continue
		}
		for n := 0; n < o.nsems; n++ {
			if pid, err := semLastPID(o.id, n); err == nil && pids[pid] {
				leaks = append(leaks, o.String())
				removeSysV(o)
				break
			}
		}
	}
	sort.Strings(leaks)
	return leaks
}

// sweepDeadRuns removes the /dev/shm objects of earlier test runs that
// were killed before their own leak check could run (a test timeout kills
// the binary): names with the test prefix of a run whose process is gone.
func sweepDeadRuns() {
	ents, err := os.ReadDir("/dev/shm")
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(strings.TrimPrefix(e.Name(), "sem."), "hipct.")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(rest, ".", 2)[0])
		if err != nil || pid == os.Getpid() || sys.AlivePID(pid) {
			continue
		}
		if os.Remove("/dev/shm/"+e.Name()) == nil {
			fmt.Fprintf(os.Stderr, "testutil: removed /dev/shm/%s, left by a killed test run (pid %d)\n", e.Name(), pid)
		}
	}
}
