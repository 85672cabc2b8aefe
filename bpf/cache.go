package bpf

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The per-CPU flow cache (flow_cache in flowaudit.c): the last flow each
// CPU counted, per direction, and the packets counted in the slot since,
// not yet in flows_N. A move collects them (collect) after its grace
// period, so no packet counted in a slot is lost or counted twice:
//
//   - a program touches a slot only when it is tagged with the program's
//     generation (active_gen + 1) or free (tag 0);
//   - after the flip and the grace period no program runs with the old
//     generation, so the slots still tagged with it are written by nobody;
//   - collect adds their pending counts to their flows_N entries (which
//     exist: a program takes a slot only for a flow whose entry it has just
//     counted in flows_N) before the old generation is drained, then frees
//     the slots, after which the programs may take them again.

// loadsInOrder: this CPU never lets a load pass an earlier one (x86's
// TSO), which the header fast path's ports_epoch relies on (flowaudit.c,
// fast_stamp): a stamp taken under an epoch must have read local_ports
// after reading the epoch. Elsewhere the loader turns the fast path off.
const loadsInOrder = runtime.GOARCH == "amd64" || runtime.GOARCH == "386"

// fastHits returns the packets the header fast path has counted since the
// collector opened or was last Reset, incoming (even slots) and outgoing
// (odd slots). The programs count them there instead of in
// STAT_PACKETS_*: readStats adds them.
func (f *flowCache) fastHits() (in, out uint64) {
	for i := 0; i < f.slots; i++ {
		n := atomic.LoadUint64(&f.slot(i).FastHits)
		if i%2 == 1 {
			out += n
		} else {
			in += n
		}
	}
	return in, out
}

// errCacheLost is a slot whose flow has no entry in the generation it is
// tagged with: the invariant above broken. The move stops rather than
// drop the slot's packets silently.
var errCacheLost = errors.New("flow cache slot without its flows_N entry")

// flowCache is flow_cache mapped into this process.
type flowCache struct {
	mem   []byte
	slots int
}

const cacheSlotSize = int(unsafe.Sizeof(flowauditFlowCacheSlot{}))

// openFlowCache maps m (an mmapable array of struct flow_cache_slot).
func openFlowCache(m *ebpf.Map) (*flowCache, error) {
	if int(m.ValueSize()) != cacheSlotSize {
		return nil, fmt.Errorf("flow cache: value size %d, want %d", m.ValueSize(), cacheSlotSize)
	}
	n := int(m.MaxEntries())
	page := os.Getpagesize()
	size := (n*cacheSlotSize + page - 1) / page * page
	mem, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("flow cache: mmap: %w", err)
	}
	return &flowCache{mem: mem, slots: n}, nil
}

func (f *flowCache) slot(i int) *flowauditFlowCacheSlot {
	return (*flowauditFlowCacheSlot)(unsafe.Pointer(&f.mem[i*cacheSlotSize]))
}

// collect adds the pending counts of the slots tagged with generation gen
// to their entries in flows (generation gen, which no program writes any
// more) and frees the slots. It returns the packets it added.
func (f *flowCache) collect(gen uint32, flows *ebpf.Map) (uint64, error) {
	tag := gen + 1
	var added uint64
	for i := 0; i < f.slots; i++ {
		s := f.slot(i)
		if atomic.LoadUint32(&s.Tag) != tag {
			continue
		}
		if s.Packets > 0 {
			key := s.Key
			var v flowauditFlowValue
			if err := flows.Lookup(&key, &v); err != nil {
				return added, fmt.Errorf("move: %w: slot %d (cpu %d), %d packets: %v", errCacheLost, i, i/2, s.Packets, err)
			}
			if i%2 == 1 {
				v.PacketsOut += s.Packets
				v.BytesOut += s.Bytes
			} else {
				v.PacketsIn += s.Packets
				v.BytesIn += s.Bytes
			}
			v.LastJiffies = max(v.LastJiffies, s.LastJiffies)
			if err := flows.Update(&key, &v, ebpf.UpdateExist); err != nil {
				return added, fmt.Errorf("move: flow cache slot %d: update: %w", i, err)
			}
			added += s.Packets
		}
		s.Packets, s.Bytes = 0, 0
		atomic.StoreUint32(&s.Tag, 0)
	}
	return added, nil
}

// reset frees every slot and drops its pending counts (Reset: nothing
// counts meanwhile).
func (f *flowCache) reset() {
	for i := 0; i < f.slots; i++ {
		s := f.slot(i)
		s.Packets, s.Bytes, s.LastJiffies = 0, 0, 0
		s.FastEpoch, s.FastHits = 0, 0
		atomic.StoreUint32(&s.Tag, 0)
	}
}

func (f *flowCache) close() error {
	if f == nil || f.mem == nil {
		return nil
	}
	err := unix.Munmap(f.mem)
	f.mem = nil
	return err
}

// FastPathHits returns how many packets the header fast path (flowaudit.c,
// fast_take) has counted since Open or the last Reset: they were counted
// in their flow's cache slot without being parsed. 0 with the flow cache
// or the fast path off.
func (c *Collector) FastPathHits() uint64 {
	if c.cache == nil {
		return 0
	}
	in, out := c.cache.fastHits()
	return in + out
}
