package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// drainBatch is one BPF_MAP_LOOKUP_AND_DELETE_BATCH call's result.
type drainBatch struct {
	keys []flowauditFlowKey
	vals []flowauditFlowValue
	n    int
	err  error // the call's error (ErrKeyNotExist: the map is empty now)
}

// drainBuffers is how many batches are in flight between the goroutine
// that reads the kernel map and the one that accumulates: one being
// filled, one being added up, one spare.
const drainBuffers = 3

// drainFlows reads and deletes every entry of a flow map that no program
// writes to any more, into the accumulator. The system calls (about half
// the time for a million entries) run on their own goroutine, so on a
// machine with two CPUs they overlap adding the previous batch up; the
// entries reach the accumulator in the order the kernel returns them, as
// a single goroutine would add them.
func (c *Collector) drainFlows(m *ebpf.Map) (int, error) {
	ncpu := 1
	if perCPU(c.flowType) {
		ncpu = c.ncpu
	}
	free := make(chan *drainBatch, drainBuffers)
	full := make(chan *drainBatch, drainBuffers)
	for range drainBuffers {
		free <- &drainBatch{keys: make([]flowauditFlowKey, batchSize), vals: make([]flowauditFlowValue, batchSize*ncpu)}
	}
	stop := make(chan struct{})
	go func() {
		defer close(full)
		var cursor ebpf.MapBatchCursor
		for {
			var b *drainBatch
			select {
			case b = <-free:
			case <-stop:
				return
			}
			b.n, b.err = m.BatchLookupAndDelete(&cursor, b.keys, b.vals, nil)
			full <- b
			if b.err != nil {
				return
			}
		}
	}()
	defer close(stop)
	// Into an empty accumulator, the map's distinct keys need no lookup.
	fresh := c.cur().target().flows.len() == 0
	total := 0
	for b := range full {
		for i := 0; i < b.n; i++ {
			var v accValue
			for cpu := 0; cpu < ncpu; cpu++ {
				v.addKernel(&b.vals[i*ncpu+cpu])
			}
			// (Calls, not a func value: v stays on the stack.)
			if fresh {
				c.addNewFlow(b.keys[i], &v)
			} else {
				c.addFlow(b.keys[i], &v)
			}
			c.reportMoved(&b.keys[i], &v, false)
		}
		total += b.n
		switch err := b.err; {
		case err == nil:
			free <- b
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return total, nil
		case errors.Is(err, ebpf.ErrNotSupported):
			n, err := c.drainByIteration(m, ncpu)
			return total + n, err
		default:
			return total, fmt.Errorf("move flows: %w", err)
		}
	}
	return total, nil
}
