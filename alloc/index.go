package alloc

// The index is a binary max-heap of keys (makeKey) in h.index[0:HeapLen];
// the aux word of each free extent's first page holds its position plus
// one, so that a free extent that coalesces can be found and moved in
// O(log n). Every function here runs under the heap lock.
//
// The callers check the entries they start from against the page map, but
// other entries may still be damaged (shared memory is untrusted): these
// functions never index out of range and never write an aux word that is
// not a free extent's; on anything inconsistent they set NeedRepair, and
// the index is rebuilt from the page map before the lock is released.

func (h *Heap) needRepair() { h.rt.NeedRepair = 1 }

func (h *Heap) setKey(i, k uint64) {
	if i >= uint64(len(h.index)) {
		h.needRepair()
		return
	}
	h.index[i] = k
	s := keyStart(k)
	if s >= h.n {
		h.needRepair()
		return
	}
	if t := h.pages[s].Tag; tagState(t) != tagFree || !isHead(t) {
		h.needRepair()
		return
	}
	h.pages[s].Aux = i + 1
}

// heapLen is HeapLen, or 0 (and a repair) if it is beyond the capacity.
func (h *Heap) heapLen() uint64 {
	n := h.rt.HeapLen
	if n > uint64(len(h.index)) {
		h.needRepair()
		return 0
	}
	return n
}

func (h *Heap) siftUp(i uint64) {
	if i >= h.heapLen() {
		h.needRepair()
		return
	}
	k := h.index[i]
	for i > 0 {
		parent := (i - 1) / 2
		pk := h.index[parent]
		if pk >= k {
			break
		}
		h.setKey(i, pk)
		i = parent
	}
	h.setKey(i, k)
}

func (h *Heap) siftDown(i uint64) {
	n := h.heapLen()
	if i >= n {
		h.needRepair()
		return
	}
	k := h.index[i]
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && h.index[r] > h.index[c] {
			c = r
		}
		if h.index[c] <= k {
			break
		}
		h.setKey(i, h.index[c])
		i = c
	}
	h.setKey(i, k)
}

func (h *Heap) push(k uint64) {
	i := h.rt.HeapLen
	if i >= uint64(len(h.index)) {
		// Free extents are never adjacent, so there are at most
		// ceil(n/2) of them and a sound page map cannot fill the index.
		h.needRepair()
		return
	}
	h.rt.HeapLen++
	h.index[i] = k
	h.siftUp(i)
}

// removeAt removes the entry at position i. It does not touch the aux word
// of the removed extent's first page (the caller rewrites it).
func (h *Heap) removeAt(i uint64) {
	n := h.heapLen()
	if i >= n {
		h.needRepair()
		return
	}
	last := n - 1
	h.rt.HeapLen--
	k := h.index[last]
	h.index[last] = 0
	if i == last {
		return
	}
	h.setKey(i, k)
	if i > 0 && h.index[(i-1)/2] < k {
		h.siftUp(i)
	} else {
		h.siftDown(i)
	}
}

// heapify orders h.index[0:HeapLen] into a heap (Floyd) and sets every aux
// position.
func (h *Heap) heapify() {
	n := h.heapLen()
	for i := uint64(0); i < n; i++ {
		h.setKey(i, h.index[i])
	}
	for i := n / 2; i > 0; i-- {
		h.siftDown(i - 1)
	}
}
