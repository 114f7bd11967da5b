package channel

import (
	"context"
	"testing"

	"github.com/heapipc/ipc/backend"
	"github.com/heapipc/ipc/internal/mem"
)

// FuzzRecordChannel overwrites a record channel's registry entry and
// control block with arbitrary bytes and drives every reader of them: the
// answer is an error or a valid result, never a panic or an out-of-range
// access.
func FuzzRecordChannel(f *testing.F) {
	f.Add(make([]byte, 64), make([]byte, 600))
	f.Add([]byte{2, 0, 0, 0, 1, 0, 0, 0, 7}, []byte("HIPCRING\x08\x00\x00\x00\x00\x00\x00\x00"))
	big := make([]byte, 600)
	for i := range big {
		big[i] = 0xff
	}
	f.Add(big[:128], big)
	f.Fuzz(func(t *testing.T, entryBytes, cbBytes []byte) {
		fx := newFixture(t, backend.Heap)
		ctx := context.Background()
		en, _, err := fx.reg.LookupOrCreate(ctx, 7, recordSpec(8))
		if err != nil {
			t.Fatal(err)
		}
		b := fx.r.Bytes()
		eb, _ := mem.Bytes(b, en.Off, entrySize)
		cb, _ := mem.Bytes(b, en.Control, RecordControlSize(8))
		saveE, saveC := append([]byte(nil), eb...), append([]byte(nil), cb...)
		copy(eb, entryBytes)
		copy(cb, cbBytes)

		fx.reg.cache.Delete(ID(7))
		if got, err := fx.reg.Lookup(7); err == nil {
			if r, err := OpenRing(fx.r, got, WaitOptions{Spin: -1}); err == nil {
				r.Check()
				r.Pending()
				r.Removable()
				r.Abandoned()
				if c, err := r.AttachConsumer(); err == nil {
					for i := 0; i < 3; i++ {
						c.TryReceive()
					}
					c.TryReceiveBatch(make([]uint64, 4))
					c.Ready()
					c.Close()
				}
				if p, err := r.AttachProducer(); err == nil {
					p.TrySend(64)
					p.TrySendBatch([]uint64{64, 128})
					p.Close()
				}
			}
		}
		fx.reg.Each(func(*Entry) error { return nil })
		fx.reg.Lookup(8)
		// Put the originals back so the fixture's cleanup checks a sane heap.
		copy(eb, saveE)
		copy(cb, saveC)
		fx.reg.Remove(ctx, en, nil, nil)
	})
}
