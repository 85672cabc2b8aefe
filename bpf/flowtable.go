package bpf

import (
	"iter"

	"github.com/flowaudit/flowaudit/internal/hugemem"
)

// flowTable is an accumulator's per-peer (and folded) entries: the entries
// themselves in one dense slice, and a map from key to position. A Go map
// holding the 128-byte values inline spent a 157-byte slot per entry times
// the table's slack (~300 MiB for a million flows, whose first touch alone
// took a second on the benchmark VM); the index map's slot is 33 bytes, and
// the slice is touched only as it fills (and backed by huge pages when it
// is sized up front, see reserve). Iterating it is a walk over contiguous
// memory, in insertion order (removals swap the last entry in).
//
// A drain into an empty table appends the kernel's entries without
// indexing them (appendNew: the keys of one map are distinct); the index
// catches up (index) when something first looks a key up: a later move
// into the same bucket, a merge, folding — never a one-shot export, which
// only walks the entries.
type flowTable struct {
	idx     map[flowauditFlowKey]int32
	ents    []flowEntry
	indexed int // ents[:indexed] are in idx
}

type flowEntry struct {
	k flowauditFlowKey
	v accValue
}

func newFlowTable() flowTable { return flowTable{idx: map[flowauditFlowKey]int32{}} }

// reserveTable returns an empty table with room for n entries.
// The index is made at its size when first needed (index).
func reserveTable(n int) flowTable {
	return flowTable{ents: hugemem.Make[flowEntry](n)}
}

func (t *flowTable) len() int { return len(t.ents) }

// index adds the entries appended by appendNew to the index.
func (t *flowTable) index() {
	if t.idx == nil {
		t.idx = make(map[flowauditFlowKey]int32, max(cap(t.ents), 8))
	}
	for ; t.indexed < len(t.ents); t.indexed++ {
		t.idx[t.ents[t.indexed].k] = int32(t.indexed)
	}
}

// appendNew adds an entry whose key the table does not hold, without
// looking it up.
func (t *flowTable) appendNew(k flowauditFlowKey, v *accValue) {
	t.ents = append(t.ents, flowEntry{k: k, v: *v})
}

// get returns k's value and whether k is present.
func (t *flowTable) get(k flowauditFlowKey) (accValue, bool) {
	t.index()
	if i, ok := t.idx[k]; ok {
		return t.ents[i].v, true
	}
	return accValue{}, false
}

// at returns k's value, inserting a zero one if k is absent. The pointer
// is valid until the next insertion or removal.
func (t *flowTable) at(k flowauditFlowKey) *accValue {
	t.index()
	if i, ok := t.idx[k]; ok {
		return &t.ents[i].v
	}
	t.idx[k] = int32(len(t.ents))
	t.ents = append(t.ents, flowEntry{k: k})
	t.indexed++
	return &t.ents[len(t.ents)-1].v
}

// removeAt removes the i-th entry: the last one takes its place.
func (t *flowTable) removeAt(i int) {
	t.index()
	delete(t.idx, t.ents[i].k)
	last := len(t.ents) - 1
	if i != last {
		t.ents[i] = t.ents[last]
		t.idx[t.ents[i].k] = int32(i)
	}
	t.ents[last] = flowEntry{}
	t.ents = t.ents[:last]
	t.indexed--
}

// all yields every entry (for reading; not while the table changes).
func (t *flowTable) all() iter.Seq2[flowauditFlowKey, accValue] {
	return func(yield func(flowauditFlowKey, accValue) bool) {
		for i := range t.ents {
			if !yield(t.ents[i].k, t.ents[i].v) {
				return
			}
		}
	}
}

// rekey visits every entry present when it is called, once; for each one
// move reports true, the entry is removed and then handed to put, which
// may change or insert entries that move must report false for (folding
// re-keys entries in one pass this way). It walks from the end: a removal
// swaps in the last entry, already visited or inserted by put, and leaves
// the entries still to visit where they are.
func (t *flowTable) rekey(move func(k flowauditFlowKey) bool, put func(k flowauditFlowKey, v *accValue)) {
	t.index()
	for i := len(t.ents) - 1; i >= 0; i-- {
		if !move(t.ents[i].k) {
			continue
		}
		e := t.ents[i]
		t.removeAt(i)
		put(e.k, &e.v)
	}
}
