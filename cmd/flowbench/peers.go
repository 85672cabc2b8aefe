package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// Part 3: what a user would otherwise run, on the same veth and traffic.

// pacer is a generator program that sends at a fixed rate: each run of it
// transmits (XDP_TX) only when the next frame is due by CLOCK_MONOTONIC and
// drops (XDP_DROP, nothing leaves) otherwise, until limit frames have
// left. The frames are therefore spread evenly over time (in the bursts of
// at most one batch, 64, that live mode flushes at once), and the count
// sent is exact: the program counts it.
type pacer struct {
	state *ebpf.Map // one element: due, interval, sent, limit (ns, ns, frames, frames)
	prog  *ebpf.Program
}

type pacerState struct {
	Due, Interval, Sent, Limit uint64
}

func newPacer() (*pacer, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_pace", Type: ebpf.Array, KeySize: 4, ValueSize: 32, MaxEntries: 1})
	if err != nil {
		return nil, err
	}
	insns := asm.Instructions{
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.LoadMem(asm.R1, asm.R7, 16, asm.DWord), // sent
		asm.LoadMem(asm.R2, asm.R7, 24, asm.DWord), // limit
		asm.JGE.Reg(asm.R1, asm.R2, "drop"),
		asm.FnKtimeGetNs.Call(),
		asm.LoadMem(asm.R1, asm.R7, 0, asm.DWord), // due
		asm.JLT.Reg(asm.R0, asm.R1, "drop"),
		asm.LoadMem(asm.R2, asm.R7, 8, asm.DWord), // interval
		asm.Add.Reg(asm.R1, asm.R2),
		asm.StoreMem(asm.R7, 0, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, asm.R7, 16, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R7, 16, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 3), // XDP_TX
		asm.Return(),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("drop"), // XDP_DROP
		asm.Return(),
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "bench_pace_tx", Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("load pacing program: %w", err)
	}
	return &pacer{state: m, prog: p}, nil
}

func (p *pacer) Close() {
	p.prog.Close()
	p.state.Close()
}

// sendPaced sends exactly total frames at an offered load of pps and
// returns the frames sent and the wall time from first to last.
func (g *generator) sendPaced(p *pacer, total uint64, pps float64) (uint64, time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, 0, err
	}
	st := pacerState{Due: uint64(ts.Nano()), Interval: uint64(float64(time.Second) / pps), Limit: total}
	if err := p.state.Put(uint32(0), st); err != nil {
		return 0, 0, err
	}
	stop := make(chan struct{})
	finished := make(chan struct{})
	bound := 3*time.Duration(float64(total)/pps*float64(time.Second)) + 10*time.Second
	go func() {
		// The run is bounded by its repeat count (every drop counts too) and
		// by time; it is stopped as soon as the last frame has left.
		defer close(stop)
		for {
			select {
			case <-finished:
				return
			case <-time.After(2 * time.Millisecond):
			}
			var cur pacerState
			if p.state.Lookup(uint32(0), &cur) == nil && cur.Sent >= total {
				return
			}
		}
	}()
	var r runResult
	err := g.w.do(func() error {
		var err error
		r, err = testRun(p.prog, g.frame, 1<<32-1, true, uint32(g.l.genIdx), g.batch, bound, stop)
		return err
	})
	close(finished)
	var cur pacerState
	if lerr := p.state.Lookup(uint32(0), &cur); lerr != nil {
		return 0, 0, lerr
	}
	wall := time.Duration(cur.Due-st.Due) - time.Duration(st.Interval) // first to last due time
	if err != nil && !errors.Is(err, errInterrupted) {
		return cur.Sent, wall, err
	}
	if cur.Sent != total {
		return cur.Sent, wall, fmt.Errorf("pacer sent %d of %d frames before its bound (%s, run %s)", cur.Sent, total, bound, r.wall)
	}
	return cur.Sent, wall, nil
}

// peerResult is one tool's run at the offered load.
type peerResult struct {
	name      string
	command   string
	sent      uint64
	offered   float64 // achieved offered load, packets/s
	accounted uint64  // packets the tool's output accounts for
	detail    string
	config    string        // configuration file content, if the tool got one
	max       *peerResult   // the same tool at the generator's maximum rate
	maxBase   float64       // the no-op receiver's rate measured right before it
	cpu       time.Duration // user+system CPU of the tool's processes, traffic start to exit
	bpfRun    time.Duration // flowaudit only: in-kernel run time of its XDP program (bpf_stats)
	bpfCnt    uint64
	err       error
	missing   bool // the tool is not installed
}

func (p peerResult) share() float64 { return float64(p.accounted) / float64(p.sent) }

// cpuOfTree sums utime+stime (and the times of waited-for children) of
// pid and every live descendant, from /proc.
func cpuOfTree(pid int) time.Duration {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	stats := map[int][]string{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := procStat(p)
		if f == nil {
			continue
		}
		stats[p] = f
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], p)
	}
	var ticks uint64
	var walk func(int)
	walk = func(p int) {
		if f, ok := stats[p]; ok {
			for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime (after the comm field)
				v, _ := strconv.ParseUint(f[i], 10, 64)
				ticks += v
			}
		}
		for _, c := range children[p] {
			walk(c)
		}
	}
	walk(pid)
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// procStat returns the fields of /proc/pid/stat after the command name
// (field 3, state, is index 0).
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return nil
	}
	return f
}

// rusageCPU is the user+system time of an exited command (including its
// waited-for children).
func rusageCPU(ps *os.ProcessState) time.Duration {
	if ps == nil {
		return 0
	}
	return ps.UserTime() + ps.SystemTime()
}

// hasPacketSocket reports whether pid has a packet socket bound to ifindex
// (a libpcap capture is running): /proc/pid/net/packet lists the
// namespace's packet sockets; the socket's inode must be one of pid's fds.
func hasPacketSocket(pid, ifindex int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/packet", pid))
	if err != nil {
		return false
	}
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		t, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(t, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(t, "socket:["), "]")] = true
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Scan() // header: sk RefCnt Type Proto Iface R Rmem User Inode
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 9 && f[4] == strconv.Itoa(ifindex) && f[5] == "1" && inodes[f[8]] {
			return true
		}
	}
	return false
}

// tool is a peer as a child process in the receiving namespace.
type tool struct {
	name    string
	args    []string
	cmd     *exec.Cmd
	stdout  bytes.Buffer
	stderr  bytes.Buffer
	waited  chan struct{}
	waitErr error
}

func (t *tool) start(l *lab) error {
	t.cmd = exec.Command("ip", append([]string{"netns", "exec", l.recvNS}, t.args...)...)
	t.cmd.Stdout, t.cmd.Stderr = &t.stdout, &t.stderr
	t.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := t.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", t.name, err)
	}
	t.waited = make(chan struct{})
	go func() { t.waitErr = t.cmd.Wait(); close(t.waited) }()
	return nil
}

// waitReady polls ready until it holds, the tool exits or 10 s pass.
func (t *tool) waitReady(ready func() bool) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-t.waited:
			return fmt.Errorf("%s exited early: %v: %s", t.name, t.waitErr, strings.TrimSpace(t.stderr.String()))
		default:
		}
		if ready() {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after 10s", t.name)
}

// stop sends sig and waits (at most 20 s, then SIGKILL).
func (t *tool) stop(sig syscall.Signal) error {
	t.cmd.Process.Signal(sig) //nolint:errcheck
	select {
	case <-t.waited:
	case <-time.After(20 * time.Second):
		t.cmd.Process.Kill() //nolint:errcheck
		<-t.waited
		return fmt.Errorf("%s did not exit after %s", t.name, sig)
	}
	return nil
}

func (t *tool) kill() {
	if t.cmd != nil && t.cmd.Process != nil && t.waited != nil {
		select {
		case <-t.waited:
		default:
			t.cmd.Process.Kill() //nolint:errcheck
			<-t.waited
		}
	}
}

// grabUint returns the number captured by pattern's first group in s.
func grabUint(pattern, s string) (uint64, bool) {
	m := regexp.MustCompile(pattern).FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseUint(m[1], 10, 64)
	return v, err == nil
}

// peerConfig is the offered load shared by every peer run.
type peerConfig struct {
	total     uint64
	pps       float64
	tmp       string // scratch directory on tmpfs
	flowaudit string // the flowaudit binary
	maxRate   bool   // send at the generator's maximum rate instead of pacing
}

// runPeer runs one tool through the same traffic: paced at cfg.pps, or at
// the generator's maximum rate.
func runPeer(l *lab, g *generator, pc *pacer, nop *noopXDP, cfg peerConfig, kind string) peerResult {
	res := peerResult{name: kind}
	var t *tool
	var ready func() bool
	var collect func() error // after traffic, before stopping
	var finish func() error  // after the tool exited
	stopSig := syscall.SIGINT
	useNoop := true
	var progID ebpf.ProgramID
	var bpf0 *ebpf.ProgramStats
	switch kind {
	case "tcpdump":
		file := filepath.Join(cfg.tmp, "tcpdump.pcap")
		t = &tool{name: kind, args: []string{"tcpdump", "-i", l.recvIf, "-n", "-w", file}}
		ready = func() bool { return hasPacketSocket(t.cmd.Process.Pid, l.recvIdx) }
		finish = func() error {
			defer os.Remove(file)
			s := t.stderr.String()
			capt, ok1 := grabUint(`(\d+) packets? captured`, s)
			filt, ok2 := grabUint(`(\d+) packets? received by filter`, s)
			drop, ok3 := grabUint(`(\d+) packets? dropped by kernel`, s)
			if !ok1 || !ok2 || !ok3 {
				return fmt.Errorf("tcpdump statistics not found in: %s", s)
			}
			res.accounted = capt
			res.detail = fmt.Sprintf("captured %d, received by filter %d, dropped by kernel %d", capt, filt, drop)
			return nil
		}
	case "softflowd":
		ctl := filepath.Join(cfg.tmp, "softflowd.ctl")
		t = &tool{name: kind, args: []string{"softflowd", "-d", "-i", l.recvIf, "-n", "127.0.0.1:2055", "-v", "9",
			"-c", ctl, "-p", filepath.Join(cfg.tmp, "softflowd.pid")}}
		ready = func() bool { return hasPacketSocket(t.cmd.Process.Pid, l.recvIdx) }
		collect = func() error {
			out, err := exec.Command("softflowctl", "-c", ctl, "statistics").CombinedOutput()
			if err != nil {
				return fmt.Errorf("softflowctl statistics: %v: %s", err, out)
			}
			s := string(out)
			proc, ok := grabUint(`(?i)Number of packets processed:?\s*(\d+)`, s)
			if !ok {
				proc, ok = grabUint(`(?i)packets processed:?\s*(\d+)`, s)
			}
			if !ok {
				return fmt.Errorf("softflowctl statistics: no packet count in: %s", s)
			}
			res.accounted = proc
			pcapRecv, _ := grabUint(`(?i)received by libpcap:?\s*(\d+)`, s)
			pcapDrop, _ := grabUint(`(?i)dropped by libpcap:?\s*(\d+)`, s)
			res.detail = fmt.Sprintf("processed %d, libpcap received %d, dropped %d (softflowctl statistics)", proc, pcapRecv, pcapDrop)
			return nil
		}
		stopSig = syscall.SIGTERM
	case "pmacctd-buffered":
		pipe := filepath.Join(cfg.tmp, "pmacct.pipe")
		conf := filepath.Join(cfg.tmp, "pmacctd.conf")
		// The memory plugin with the transfer buffering pmacct's
		// CONFIG-KEYS recommends for heavy loads (a 10 MB core→plugin queue
		// in 10 kB chunks, the 1:1000 ratio it suggests); with the defaults
		// (no buffering, 4 MB) it accounts for a fraction of this load.
		text := "daemonize: false\npcap_interface: " + l.recvIf + "\naggregate: src_host,dst_host,src_port,dst_port,proto\n" +
			"plugins: memory\nimt_path: " + pipe + "\nplugin_pipe_size: 10240000\nplugin_buffer_size: 10240\n"
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			res.err = err
			return res
		}
		res.config = strings.ReplaceAll(strings.TrimSpace(text), "\n", "; ")
		t = &tool{name: kind, args: []string{"pmacctd", "-f", conf}}
		ready = func() bool { return hasPacketSocketTree(t.cmd.Process.Pid, l.recvIdx) }
		collect = pmacctCollect(pipe, &res)
	case "pmacctd-defaults":
		pipe := filepath.Join(cfg.tmp, "pmacct.pipe")
		t = &tool{name: kind, args: []string{"pmacctd", "-P", "memory", "-i", l.recvIf,
			"-c", "src_host,dst_host,src_port,dst_port,proto", "-p", pipe}}
		ready = func() bool { return hasPacketSocketTree(t.cmd.Process.Pid, l.recvIdx) }
		collect = pmacctCollect(pipe, &res)
	case "flowaudit":
		snap := filepath.Join(cfg.tmp, "flowaudit-snapshot.json")
		useNoop = false
		t = &tool{name: kind, args: []string{cfg.flowaudit, "record", "-i", l.recvIf, "-d", "10m", "-o", snap}}
		ready = func() bool {
			lk, err := l.recvNL.LinkByName(l.recvIf)
			if err != nil || lk.Attrs().Xdp == nil || !lk.Attrs().Xdp.Attached {
				return false
			}
			progID = ebpf.ProgramID(lk.Attrs().Xdp.ProgId)
			return true
		}
		collect = func() error {
			if cfg.maxRate {
				return nil
			}
			p, err := ebpf.NewProgramFromID(progID)
			if err != nil {
				return err
			}
			defer p.Close()
			st, err := p.Stats()
			if err != nil {
				return err
			}
			res.bpfRun, res.bpfCnt = st.Runtime-bpf0.Runtime, st.RunCount-bpf0.RunCount
			if res.bpfCnt == 0 {
				return errors.New("bpf_stats: no program runs recorded (statistics not enabled?)")
			}
			return nil
		}
		finish = func() error {
			defer os.Remove(snap)
			s, err := snapshot.ReadFile(snap)
			if err != nil {
				return err
			}
			var in uint64
			for _, f := range s.Flows {
				in += f.PacketsIn
			}
			res.accounted = in
			res.detail = fmt.Sprintf("snapshot: %d flow(s), %d packets in; datapath counter %d; insert failures %d",
				len(s.Flows), in, s.Stats.PacketsIngress, s.Stats.FlowInsertFailed)
			if s.Stats.PacketsIngress != in {
				return fmt.Errorf("flowaudit: datapath counted %d packets, flows hold %d", s.Stats.PacketsIngress, in)
			}
			return nil
		}
	default:
		res.err = fmt.Errorf("unknown peer %q", kind)
		return res
	}
	res.command = strings.Join(t.args, " ")
	if useNoop {
		if err := nop.attach(); err != nil {
			res.err = err
			return res
		}
		defer nop.detach() //nolint:errcheck
	}
	if err := t.start(l); err != nil {
		res.err = err
		return res
	}
	defer t.kill()
	if err := t.waitReady(ready); err != nil {
		res.err = err
		return res
	}
	time.Sleep(300 * time.Millisecond) // let it settle (first reads, socket refresh)
	if kind == "flowaudit" && !cfg.maxRate {
		// bpf_stats only for this run: it adds two clock reads to every
		// program run, which would slow the max-rate runs.
		st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			res.err = fmt.Errorf("enable bpf_stats: %w", err)
			return res
		}
		defer st.Close()
		p, err := ebpf.NewProgramFromID(progID)
		if err == nil {
			bpf0, err = p.Stats()
			p.Close()
		}
		if err != nil {
			res.err = err
			return res
		}
	}
	cpu0 := cpuOfTree(t.cmd.Process.Pid)
	var sent uint64
	var wall time.Duration
	var err error
	if cfg.maxRate {
		wall, err = g.send(uint32(cfg.total), 60*time.Second+time.Duration(cfg.total)*time.Microsecond)
		sent, wall = cfg.total, wall-g.overhead
	} else {
		sent, wall, err = g.sendPaced(pc, cfg.total, cfg.pps)
	}
	res.sent = sent
	res.offered = float64(sent) / wall.Seconds()
	if err != nil {
		res.err = err
		return res
	}
	// Drain: libpcap hands a TPACKET_V3 block over when it is full or
	// after its timeout (tcpdump: 1 s), so wait longer than that.
	time.Sleep(1500 * time.Millisecond)
	if collect != nil {
		if err := collect(); err != nil {
			res.err = err
			return res
		}
	}
	cpuLive := cpuOfTree(t.cmd.Process.Pid)
	if err := t.stop(stopSig); err != nil {
		res.err = err
		return res
	}
	res.cpu = max(rusageCPU(t.cmd.ProcessState), cpuLive) - cpu0
	if finish != nil {
		if err := finish(); err != nil {
			res.err = err
		}
	}
	return res
}

// pmacctCollect sums the packets of pmacctd's memory table.
func pmacctCollect(pipe string, res *peerResult) func() error {
	return func() error {
		out, err := exec.Command("pmacct", "-p", pipe, "-s", "-O", "csv").CombinedOutput()
		if err != nil {
			return fmt.Errorf("pmacct -s: %v: %s", err, out)
		}
		sum, rows, err := sumCSVColumn(string(out), "PACKETS")
		if err != nil {
			return err
		}
		res.accounted = sum
		res.detail = fmt.Sprintf("%d packets in %d flows (pmacct -s, memory plugin)", sum, rows)
		return nil
	}
}

// hasPacketSocketTree is hasPacketSocket for pid or any of its children
// (pmacctd captures in its core process, which may be a child).
func hasPacketSocketTree(pid, ifindex int) bool {
	if hasPacketSocket(pid, ifindex) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return false
	}
	for _, c := range strings.Fields(string(b)) {
		if cp, err := strconv.Atoi(c); err == nil && hasPacketSocketTree(cp, ifindex) {
			return true
		}
	}
	return false
}

// sumCSVColumn sums a column of pmacct's CSV output.
func sumCSVColumn(out, col string) (uint64, int, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 {
		return 0, 0, errors.New("pmacct: empty output")
	}
	hdr := strings.Split(lines[0], ",")
	idx := -1
	for i, h := range hdr {
		if strings.EqualFold(strings.TrimSpace(h), col) {
			idx = i
		}
	}
	if idx < 0 {
		return 0, 0, fmt.Errorf("pmacct: no %s column in %q", col, lines[0])
	}
	var sum uint64
	rows := 0
	for _, ln := range lines[1:] {
		f := strings.Split(ln, ",")
		if len(f) <= idx {
			continue
		}
		v, err := strconv.ParseUint(strings.TrimSpace(f[idx]), 10, 64)
		if err != nil {
			continue
		}
		sum += v
		rows++
	}
	return sum, rows, nil
}
