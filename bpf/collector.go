package bpf

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Default map sizes. A flow is (interface, direction, protocol, service
// port, peer): an appliance with a few thousand peers uses a few thousand
// entries; the default leaves room for scans.
const (
	DefaultFlowEntries     = 65536
	DefaultConnEntries     = 65536
	DefaultOverflowEntries = 8192
)

// Options configure Open.
type Options struct {
	// FlowEntries is the flow map's max_entries (default DefaultFlowEntries).
	FlowEntries uint32
	// ConnEntries is the connection-orientation LRU's max_entries.
	ConnEntries uint32
	// OverflowEntries is the max_entries of each per-service overflow map
	// (default DefaultOverflowEntries).
	OverflowEntries uint32
	// FlowBudget bounds the collector's own memory, in entries
	// accumulated across moves — all the buckets of a Window together;
	// beyond it the peers of the services with most peers are folded into
	// prefixes (budget.go). 0: unbounded.
	FlowBudget int
	// Window, when positive, makes ReadMaps return only about the last
	// Window of traffic (a continuous audit); zero keeps everything.
	Window time.Duration
	// FlowMapType overrides the flow map type. Zero keeps the shipped
	// choice (ebpf.Hash with atomic adds); the benchmarks compare
	// ebpf.PerCPUHash, ebpf.LRUHash and ebpf.LRUCPUHash.
	FlowMapType ebpf.MapType
	// EphemeralPorts overrides the range the port heuristic treats as
	// client ports. Zero reads net.ipv4.ip_local_port_range.
	EphemeralPorts [2]uint16
	// SocketsKnown declares that the caller keeps the local socket set
	// complete (StartSocketRefresh before Attach): a TCP segment whose local
	// port has no listener is then known to belong to a connection this
	// host opened, without a lookup or a port guess. Leave it false when
	// sockets are unknown (replaying a capture).
	SocketsKnown bool
	// NoFlowCache turns the per-CPU last-flow cache off (bpf/cache.go):
	// every packet then looks its flow up in flows_N. For comparisons
	// (make bench); the counts are the same either way.
	NoFlowCache bool
	// NoFastPath turns the header fast path off (flowaudit.c, fast_take):
	// every frame is then parsed and classified. For comparisons (make
	// bench); the counts are the same either way. The fast path needs the
	// flow cache and x86's load order: without either it is off anyway.
	NoFastPath bool
	// BenchCut makes the programs skip part of their per-packet work:
	// for the benchmark's ablation rows only (cmd/flowbench), counts are
	// then incomplete. Zero: the whole path, as shipped.
	BenchCut BenchCut
	// Logger receives attach decisions and warnings (default: no-op).
	Logger *zap.Logger
	// OnMove, if set, is called with every entry a move takes out of the
	// kernel maps (moved.go), from the goroutine that moves, never
	// concurrently. It must be quick and must not call the collector.
	OnMove func(*MovedFlow)
	// DNSRing is the size in bytes of the ring buffer carrying DNS answers
	// to userspace (a power of two, at least a page; default
	// DefaultDNSRing). Negative: no passive DNS (the programs still count
	// answers they could not hand over as dropped).
	DNSRing int
	// Programs selects the programs Open loads (default LoadLive). Each
	// one verifies the whole packet path again, which dominates the load
	// time, so a replay loads only what it runs.
	Programs ProgramSet

	// dnsDrain: how long the DNS reader sleeps before reading answers
	// that did not wake it (default dnsDrainEvery); for tests.
	dnsDrain time.Duration
}

// ProgramSet selects programs for Open. flowaudit_clock is always loaded.
type ProgramSet uint8

const (
	// LoadLive: the programs a live recording attaches (XDP, TC ingress,
	// TC egress); the per-packet replay path (bpf/replay) runs them too.
	LoadLive ProgramSet = 1 << iota
	// LoadReplay: flowaudit_replay, the batch program of a replay
	// (ReplayBatch); never attached.
	LoadReplay
)

// programs Open loads for a ProgramSet (the clock comes with every set).
type liveProgs struct {
	Xdp       *ebpf.Program `ebpf:"flowaudit_xdp"`
	TcEgress  *ebpf.Program `ebpf:"flowaudit_tc_egress"`
	TcIngress *ebpf.Program `ebpf:"flowaudit_tc_ingress"`
}

type replayProgs struct {
	Replay *ebpf.Program `ebpf:"flowaudit_replay"`
}

type allProgs struct {
	liveProgs
	replayProgs
}

// loadTarget is what LoadAndAssign fills: every map and variable, the
// clock and the programs P. Programs not named are not loaded.
type loadTarget[P any] struct {
	Maps  *flowauditMaps
	Vars  *flowauditVariables
	Clock *ebpf.Program `ebpf:"flowaudit_clock"`
	Progs *P
}

// load loads the maps, variables and the programs of set into c.objs.
func (c *Collector) load(spec *ebpf.CollectionSpec, set ProgramSet) error {
	var live liveProgs
	var rep replayProgs
	var err error
	switch set {
	case LoadLive:
		t := loadTarget[liveProgs]{&c.objs.flowauditMaps, &c.objs.flowauditVariables, nil, &live}
		err = spec.LoadAndAssign(&t, nil)
		c.objs.FlowauditClock = t.Clock
	case LoadReplay:
		t := loadTarget[replayProgs]{&c.objs.flowauditMaps, &c.objs.flowauditVariables, nil, &rep}
		err = spec.LoadAndAssign(&t, nil)
		c.objs.FlowauditClock = t.Clock
	case LoadLive | LoadReplay:
		var all allProgs
		t := loadTarget[allProgs]{&c.objs.flowauditMaps, &c.objs.flowauditVariables, nil, &all}
		err = spec.LoadAndAssign(&t, nil)
		c.objs.FlowauditClock = t.Clock
		live, rep = all.liveProgs, all.replayProgs
	default:
		return fmt.Errorf("program set %#x not supported", uint8(set))
	}
	c.objs.FlowauditXdp, c.objs.FlowauditTcEgress, c.objs.FlowauditTcIngress = live.Xdp, live.TcEgress, live.TcIngress
	c.objs.FlowauditReplay = rep.Replay
	c.programs = set
	return err
}

// Collector owns the loaded programs and maps and the interfaces they are
// attached to. It is safe for concurrent use.
type Collector struct {
	objs      flowauditObjects
	log       *zap.Logger
	flowType  ebpf.MapType
	ncpu      int // possible CPUs (per-CPU flow map variants)
	ephemeral [2]uint16
	ns        netns.NsHandle // network namespace Open ran in
	nl        *netlink.Handle

	flowMaps     [2]*ebpf.Map // flows_0, flows_1
	cache        *flowCache   // flow_cache, mapped; nil for the benchmark-only map types
	overflowMaps [2]*ebpf.Map // overflow_0, overflow_1

	mu       sync.Mutex
	attached map[int]*Attachment
	closed   bool
	boot     clock

	// Guarded by moveMu: the generation the programs count into and the
	// counts moved out of the kernel (move.go).
	moveMu    sync.Mutex
	portsMu   sync.Mutex // SetLocalPorts: the map update and its epoch bump
	gen       uint32
	budget    int           // Options.FlowBudget
	window    time.Duration // Options.Window
	buckets   []*bucket     // window.go; one when there is no window
	moves     uint64
	moved     uint64 // flow entries moved out in total
	highWater uint32 // most entries one generation held
	foldLog   []FoldEvent
	// unreported: folds the next Move returns; enforceAt: entries at
	// which the budget is next enforced once folding could not reach it
	// (0: as soon as it is exceeded). budget.go.
	unreported []FoldEvent
	enforceAt  int

	// exportMu serialises exports (ReadMaps), which lend the buckets out
	// (window.go); moves never take it. exportHook, if set (tests), runs
	// in ReadMaps during the conversion, with moveMu not held.
	exportMu   sync.Mutex
	exportHook func()

	onMove func(*MovedFlow) // Options.OnMove

	dns *dnsReader // passive DNS (dns.go); nil with Options.DNSRing < 0

	programs ProgramSet // Options.Programs: what Open loaded
}

// Open loads the programs and maps into the kernel. It does not attach
// anything yet. The caller's network namespace at the time of Open is the
// one Attach and the socket refresh use.
func Open(opts Options) (*Collector, error) {
	if opts.FlowEntries == 0 {
		opts.FlowEntries = DefaultFlowEntries
	}
	if opts.ConnEntries == 0 {
		opts.ConnEntries = DefaultConnEntries
	}
	if opts.OverflowEntries == 0 {
		opts.OverflowEntries = DefaultOverflowEntries
	}
	if opts.FlowMapType == ebpf.UnspecifiedMap {
		opts.FlowMapType = ebpf.Hash
	}
	if opts.BenchCut > BenchCutAccount {
		return nil, fmt.Errorf("bench cut %d: want %d to %d", opts.BenchCut, BenchCutNone, BenchCutAccount)
	}
	switch opts.FlowMapType {
	case ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash, ebpf.LRUCPUHash:
	default:
		return nil, fmt.Errorf("flow map type %s not supported", opts.FlowMapType)
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Programs == 0 {
		opts.Programs = LoadLive
	}
	if opts.EphemeralPorts == [2]uint16{} {
		r, err := readEphemeralRange()
		if err != nil {
			opts.Logger.Warn("cannot read ephemeral port range, using 32768-60999", zap.Error(err))
			r = [2]uint16{32768, 60999}
		}
		opts.EphemeralPorts = r
	}
	if opts.EphemeralPorts[0] > opts.EphemeralPorts[1] {
		return nil, fmt.Errorf("ephemeral port range %d-%d: low end above high end", opts.EphemeralPorts[0], opts.EphemeralPorts[1])
	}

	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("remove memlock limit: %w", ErrPermission)
		}
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}

	spec, err := loadFlowaudit()
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	// Both generations and the outer map's template must agree: the
	// kernel checks inner maps against the template.
	for _, m := range []*ebpf.MapSpec{spec.Maps["flows_0"], spec.Maps["flows_1"], spec.Maps["flow_gens"].InnerMap} {
		m.MaxEntries = opts.FlowEntries
		m.Type = opts.FlowMapType
	}
	for _, m := range []*ebpf.MapSpec{spec.Maps["overflow_0"], spec.Maps["overflow_1"], spec.Maps["overflow_gens"].InnerMap} {
		m.MaxEntries = opts.OverflowEntries
	}
	spec.Maps["conns"].MaxEntries = opts.ConnEntries
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("possible CPUs: %w", err)
	}
	spec.Maps["flow_cache"].MaxEntries = uint32(2 * ncpu) // slot 2 * cpu + egress
	// A cache slot's flow must keep its entry until a move collects it:
	// not so with LRU eviction, and per-CPU values are another layout.
	cacheOn := opts.FlowMapType == ebpf.Hash && !opts.NoFlowCache
	fastOn := cacheOn && !opts.NoFastPath && opts.BenchCut == BenchCutNone && loadsInOrder
	wantDNS := opts.DNSRing >= 0
	switch {
	case opts.DNSRing == 0:
		opts.DNSRing = DefaultDNSRing
	case opts.DNSRing > 0 && (opts.DNSRing&(opts.DNSRing-1) != 0 || opts.DNSRing < os.Getpagesize()):
		return nil, fmt.Errorf("dns ring size %d: want a power of two of at least %d", opts.DNSRing, os.Getpagesize())
	case opts.DNSRing < 0:
		opts.DNSRing = os.Getpagesize() // the map must exist; nobody reads it
	}
	spec.Maps["dns_ring"].MaxEntries = uint32(opts.DNSRing)
	percpu := perCPU(opts.FlowMapType)
	for name, v := range map[string]any{
		"ephemeral_lo":   opts.EphemeralPorts[0],
		"ephemeral_hi":   opts.EphemeralPorts[1],
		"percpu_values":  boolU8(percpu),
		"sockets_known":  boolU8(opts.SocketsKnown),
		"bench_cut":      uint8(opts.BenchCut),
		"flow_cache_on":  boolU8(cacheOn),
		"fast_path_on":   boolU8(fastOn),
		"dns_wake_bytes": uint32(opts.DNSRing / 4),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}

	c := &Collector{
		log:       opts.Logger,
		flowType:  opts.FlowMapType,
		ncpu:      ncpu,
		ephemeral: opts.EphemeralPorts,
		attached:  map[int]*Attachment{},
		budget:    opts.FlowBudget,
		window:    opts.Window,
		onMove:    opts.OnMove,
	}
	c.resetBuckets(time.Now())
	if err := c.load(spec, opts.Programs); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("load objects: %w", ErrPermission)
		}
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load objects: verifier: %+v", ve)
		}
		return nil, fmt.Errorf("load objects: %w", err)
	}
	c.flowMaps = [2]*ebpf.Map{c.objs.Flows0, c.objs.Flows1}
	c.overflowMaps = [2]*ebpf.Map{c.objs.Overflow0, c.objs.Overflow1}
	if cacheOn {
		if c.cache, err = openFlowCache(c.objs.FlowCache); err != nil {
			c.objs.Close()
			return nil, err
		}
	}

	// The namespace and the netlink sockets are taken on one locked
	// thread, so the sockets live in c.ns without a setns: NewHandleAt
	// would setns even into the current namespace, which needs
	// CAP_SYS_ADMIN (docs/DEPLOY.md: the service runs without it).
	// NETLINK_INET_DIAG must be listed: a family missing here would be
	// opened later, in whatever namespace the calling thread is in then.
	runtime.LockOSThread()
	c.ns, err = netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		c.cache.close() //nolint:errcheck
		c.objs.Close()
		return nil, fmt.Errorf("get network namespace: %w", err)
	}
	c.nl, err = netlink.NewHandle(unix.NETLINK_ROUTE, unix.NETLINK_INET_DIAG)
	runtime.UnlockOSThread()
	if err != nil {
		c.ns.Close()
		c.cache.close() //nolint:errcheck
		c.objs.Close()
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	if c.boot, err = newClock(c.readJiffies); err != nil {
		c.Close()
		return nil, err
	}
	if wantDNS {
		if c.dns, err = newDNSReader(c, cmp.Or(opts.dnsDrain, dnsDrainEvery)); err != nil {
			c.Close()
			return nil, err
		}
	}
	c.logMemory()
	return c, nil
}

func boolU8(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// readEphemeralRange reads net.ipv4.ip_local_port_range (also used for IPv6).
func readEphemeralRange() ([2]uint16, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return [2]uint16{}, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return [2]uint16{}, fmt.Errorf("ip_local_port_range: unexpected %q", strings.TrimSpace(string(b)))
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil {
		return [2]uint16{}, fmt.Errorf("ip_local_port_range: unexpected %q", strings.TrimSpace(string(b)))
	}
	return [2]uint16{uint16(lo), uint16(hi)}, nil
}

// MapMemory is the kernel memory one map uses, as the kernel reports it.
type MapMemory struct {
	Name       string
	Type       ebpf.MapType
	MaxEntries uint32
	Bytes      uint64
}

// Memory reports the memory of every map (bpf_map_info memlock).
func (c *Collector) Memory() []MapMemory {
	var out []MapMemory
	for _, m := range []struct {
		name string
		m    *ebpf.Map
	}{
		{"flows_0", c.objs.Flows0}, {"flows_1", c.objs.Flows1},
		{"overflow_0", c.objs.Overflow0}, {"overflow_1", c.objs.Overflow1},
		{"conns", c.objs.Conns}, {"local_ports", c.objs.LocalPorts}, {"service_hints", c.objs.ServiceHints},
		{"stats", c.objs.Stats}, {"ethertypes", c.objs.Ethertypes}, {"dns_ring", c.objs.DnsRing},
		{"replay_bufs", c.objs.ReplayBufs},
	} {
		mm := MapMemory{Name: m.name, Type: m.m.Type(), MaxEntries: m.m.MaxEntries()}
		if info, err := m.m.Info(); err == nil {
			mm.Bytes, _ = info.Memlock()
		}
		out = append(out, mm)
	}
	return out
}

func (c *Collector) logMemory() {
	var total uint64
	fields := []zap.Field{}
	for _, m := range c.Memory() {
		total += m.Bytes
		fields = append(fields, zap.String(m.Name, fmt.Sprintf("%s %d entries %s", m.Type, m.MaxEntries, humanBytes(m.Bytes))))
	}
	fields = append(fields, zap.String("total", humanBytes(total)))
	c.log.Info("maps loaded", fields...)
}

func humanBytes(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}

// EphemeralPorts returns the client port range the heuristic uses.
func (c *Collector) EphemeralPorts() [2]uint16 { return c.ephemeral }

// Close detaches from every interface and unloads programs and maps.
func (c *Collector) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for idx, a := range c.attached {
		errs = append(errs, a.detach())
		delete(c.attached, idx)
	}
	if c.nl != nil {
		c.nl.Close()
	}
	if c.dns != nil {
		errs = append(errs, c.dns.close())
	}
	c.ns.Close()
	errs = append(errs, c.cache.close(), c.objs.Close())
	return errors.Join(errs...)
}

// Reset empties every map — both flow and overflow generations,
// connection orientations, local ports, service hints, ethertype and
// statistics counters —
// and the counts already moved out. Replay and tests use it between runs;
// a live recording never needs it. Nothing may be counting meanwhile.
func (c *Collector) Reset() error {
	c.moveMu.Lock()
	defer c.moveMu.Unlock()
	for _, m := range []*ebpf.Map{c.objs.Flows0, c.objs.Flows1, c.objs.Overflow0, c.objs.Overflow1, c.objs.Conns, c.objs.Ethertypes} {
		if err := clearMap(m); err != nil {
			return err
		}
	}
	if err := c.objs.ActiveGen.Set(uint32(0)); err != nil {
		return fmt.Errorf("reset generation: %w", err)
	}
	c.gen = 0
	if c.cache != nil {
		c.cache.reset()
	}
	c.resetBuckets(time.Now())
	c.moves, c.moved, c.highWater, c.foldLog, c.unreported = 0, 0, 0, nil, nil
	if err := c.SetLocalPorts(nil); err != nil {
		return err
	}
	if _, err := c.SetServiceHints(nil); err != nil {
		return err
	}
	if c.dns != nil {
		c.dns.sync()
		c.dns.tab.Reset()
	}
	zero := make([]uint64, c.ncpu)
	for i := uint32(0); i < c.objs.Stats.MaxEntries(); i++ {
		if err := c.objs.Stats.Update(i, zero, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("reset stats: %w", err)
		}
	}
	return nil
}

func clearMap(m *ebpf.Map) error {
	var keys [][]byte
	var prev []byte
	for {
		next := make([]byte, m.KeySize())
		var err error
		if prev == nil {
			err = m.NextKey(nil, &next)
		} else {
			err = m.NextKey(prev, &next)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return fmt.Errorf("reset %s: %w", m, err)
		}
		keys = append(keys, next)
		prev = next
	}
	for _, key := range keys {
		if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("reset %s: %w", m, err)
		}
	}
	return nil
}

// perCPU reports whether a flow map type keeps one value per CPU.
func perCPU(t ebpf.MapType) bool { return t == ebpf.PerCPUHash || t == ebpf.LRUCPUHash }
