// Command ipcctl inspects and cleans up heapipc buffers.
//
//	ipcctl list                         buffers in /dev/shm (POSIX segments)
//	ipcctl stat    [-backends s,m] NAME  heap, slab and channel figures
//	ipcctl check   [-backends s,m] NAME  walk everything; exit 1 on a violation
//	ipcctl recover [-backends s,m] NAME  reclaim what dead processes left
//	ipcctl remove  [-backends s,m] NAME  remove the buffer's names (like Destroy, without attaching)
//
// -backends names the segment and semaphore backends ("posix,sysv"; the
// default is the build's). SysV segments are not listed (their keys do
// not name them); stat, check and remove work on them by name.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	ipc "github.com/heapipc/ipc"
	"github.com/heapipc/ipc/backend"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	backends := fs.String("backends", "", "segment,semaphore backends (posix, sysv)")
	fs.Parse(os.Args[2:])
	seg, sem, _ := strings.Cut(*backends, ",")
	var err error
	switch cmd {
	case "list":
		err = list()
	case "stat", "check", "recover", "remove":
		if fs.NArg() != 1 {
			usage()
		}
		name := fs.Arg(0)
		if cmd == "remove" {
			err = ipc.Remove(name, seg, sem)
			if err == nil {
				fmt.Printf("removed %s\n", name)
			}
			break
		}
		err = withBuffer(name, seg, sem, cmd)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipcctl:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: ipcctl list | {stat|check|recover|remove} [-backends seg,sem] NAME")
	os.Exit(2)
}

func withBuffer(name, seg, sem, cmd string) (err error) {
	b, err := ipc.Open(name, ipc.AttachOnly(), ipc.WithBackends(seg, sem))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.Close()) }()
	switch cmd {
	case "stat":
		st, err := b.Stats()
		if err != nil {
			return err
		}
		s, m := b.Backends()
		w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintf(w, "buffer\t%s (%s segment, %s semaphores)\n", name, s, m)
		fmt.Fprintf(w, "heap\t%d of %d bytes free, largest free run %d, %d free / %d allocated extents, fragmentation %.2f\n",
			st.Heap.FreeBytes, st.Heap.TotalBytes, st.Heap.LargestFree, st.Heap.FreeExtents, st.Heap.AllocExtents, st.Heap.Fragmentation())
		fmt.Fprintf(w, "records\t%d live in %d slabs (%d active, %d retired), %d large\n",
			st.Records.LiveRecords, st.Records.Slabs, st.Records.ActiveSlabs, st.Records.RetiredSlabs, st.Records.LargeRecords)
		fmt.Fprintf(w, "channels\t%d, and %d static segments\n", st.Channels, st.Statics)
		fmt.Fprintf(w, "lock\t%d takeovers, %d repairs\n", st.Heap.Takeovers, st.Heap.Repairs)
		return w.Flush()
	case "check":
		if err := b.Check(); err != nil {
			return err
		}
		fmt.Printf("%s: no violation found\n", name)
	case "recover":
		n, err := b.Recover()
		if err != nil {
			return err
		}
		fmt.Printf("%s: %d bytes reclaimed\n", name, n)
	}
	return nil
}

// list prints the POSIX segments under /dev/shm that carry heapipc's
// magic, with their size, and the temporary files of creates that have
// not published theirs.
// tempPrefix starts the name of a creator's temporary file in /dev/shm
// (backend/posix_linux.go).
const tempPrefix = ".hipc-tmp."

func list() error {
	ents, err := os.ReadDir(backend.ShmDir)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tBYTES\tLAYOUT")
	for _, e := range ents {
		// Only regular files: opening a FIFO would block.
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), "sem.") {
			continue
		}
		if rest, ok := strings.CutPrefix(e.Name(), tempPrefix); ok {
			// A create that has not published its file, or one that
			// was killed before it could remove it.
			pid, _, _ := strings.Cut(rest, ".")
			if fi, err := e.Info(); err == nil {
				fmt.Fprintf(w, "%s\t%d\tunfinished create by pid %s (a later create removes it once that pid is gone)\n", e.Name(), fi.Size(), pid)
			}
			continue
		}
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		f, err := os.Open(backend.ShmDir + "/" + e.Name())
		if err != nil {
			continue
		}
		var hdr [12]byte
		n, _ := f.Read(hdr[:])
		fi, _ := f.Stat()
		f.Close()
		if n < 12 || binary.LittleEndian.Uint64(hdr[:8]) != backend.Magic {
			continue
		}
		fmt.Fprintf(w, "%s\t%d\tv%d\n", e.Name(), fi.Size(), binary.LittleEndian.Uint32(hdr[8:]))
	}
	return w.Flush()
}
