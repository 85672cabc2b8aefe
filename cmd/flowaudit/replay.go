package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/bpf/replay"
)

func init() {
	register(&command{
		name:     "replay",
		summary:  "feed a pcap/pcapng capture through the XDP/TC programs into a snapshot file",
		usage:    "flowaudit replay CAPTURE --out FILE [--local-addr ADDR|PREFIX ...] [flags]",
		examples: replayExamples,
		setup:    setupReplay,
	})
}

const replayExamples = `  # A capture taken on the appliance; its address is found from the traffic
  flowaudit replay capture.pcapng --out snap.json
  flowaudit audit --matrix utmstack@11 --role manager --snapshot snap.json

  # Say which addresses are the appliance's (addresses or prefixes)
  flowaudit replay tap.pcap --local-addr 192.0.2.10 --local-addr 2001:db8::/64 --out snap.json

  # Services known to listen, as sock_diag would report them live
  flowaudit replay capture.pcap --listening tcp/8443,udp/514 --out snap.json

Needs root (or CAP_BPF): the packets run through the kernel programs with
BPF_PROG_TEST_RUN. A capture that is cut short or corrupt still gives a
snapshot of the packets before the damage, and exit code 1 (a capture cut
short is only a warning with --allow-truncated). See docs/REPLAY.md.`

func setupReplay(fs *pflag.FlagSet) runFunc {
	var (
		out            string
		locals         []string
		listening      []string
		ephemeral      string
		maxFlows       uint32
		workers        int
		resolution     time.Duration
		ingress        string
		iface          string
		allowTruncated bool
		perPacket      bool
	)
	fs.StringVarP(&out, "out", "o", "", "snapshot file to write (atomically): NAME.json is plain JSON, any other name the compact encoding (docs/SNAPSHOT.md)")
	fs.StringSliceVarP(&locals, "local-addr", "l", nil, "address or prefix of the captured host (repeat or comma-separate); default: the most frequent address of each IP version")
	fs.StringSliceVar(&listening, "listening", nil, "local service known to listen, PROTO/PORT (tcp, udp, sctp), e.g. tcp/8443")
	fs.StringVar(&ephemeral, "ephemeral-ports", fmt.Sprintf("%d-%d", replay.DefaultEphemeralPorts[0], replay.DefaultEphemeralPorts[1]), "the captured host's client port range (net.ipv4.ip_local_port_range)")
	fs.Uint32Var(&maxFlows, "max-flows", bpf.DefaultFlowEntries, "flow map size (entries); a full map is reported, never silent")
	fs.IntVar(&workers, "workers", 0, "parallel BPF_PROG_TEST_RUN workers (default: one per CPU; with --per-packet one per CPU but one); the result does not depend on it")
	fs.DurationVar(&resolution, "time-resolution", 0, "with --per-packet: precision of each flow's first/last seen (default: max(1s, capture length/1000)); otherwise they are exact")
	fs.BoolVar(&perPacket, "per-packet", false, "one BPF_PROG_TEST_RUN per packet through the live programs, first/last seen in time slices (the slower path before batches; implied by --ingress tc)")
	fs.StringVar(&ingress, "ingress", "xdp", "program for incoming packets: xdp or tc")
	fs.StringVar(&iface, "iface-name", "", "interface name in the snapshot (default: the pcapng interface name, else \"replay\")")
	fs.BoolVar(&allowTruncated, "allow-truncated", false, "a capture cut short (file ends inside a packet) is a warning, not an error")
	return func(e *env, args []string) error {
		if len(args) != 1 {
			return usageErrorf("replay needs exactly one capture file")
		}
		if out == "" {
			return usageErrorf("--out is required")
		}
		path := args[0]
		o := replay.Options{Workers: workers, Resolution: resolution, PerPacket: perPacket, Interface: iface, ToolVersion: Version(), Logger: e.log}
		var err error
		if o.Local, err = parsePrefixes(locals); err != nil {
			return err
		}
		if o.Listening, err = parseListening(listening); err != nil {
			return err
		}
		eph, err := parsePortRange(ephemeral)
		if err != nil {
			return err
		}
		switch ingress {
		case "xdp":
			o.Ingress = bpf.HookXDP
		case "tc":
			o.Ingress = bpf.HookTCIngress
		default:
			return usageErrorf("--ingress %q: want xdp or tc", ingress)
		}
		if maxFlows == 0 {
			return usageErrorf("--max-flows must be at least 1")
		}
		if resolution < 0 {
			return usageErrorf("--time-resolution %s: must not be negative", resolution)
		}

		ctx, stop := signalContext()
		defer stop()
		var bar *progressBar
		if isTerminal(e.stderr) {
			bar = &progressBar{w: e.stderr, name: path}
			o.Progress = bar.update
		}
		c, err := bpf.Open(bpf.Options{FlowEntries: maxFlows, EphemeralPorts: eph, Logger: e.log, Programs: replay.Programs(o), DNSRing: replay.DNSRing})
		if err != nil {
			return err
		}
		defer c.Close()
		res, err := replay.Run(ctx, c, path, o)
		bar.done()
		var ce *replay.CaptureError
		if err != nil && !errors.As(err, &ce) {
			return err
		}
		if werr := snapshot.WriteFile(out, res.Snapshot); werr != nil {
			return werr
		}
		logReplay(e.log, res, out)
		if ce != nil {
			if ce.Truncated && allowTruncated {
				e.log.Warn("capture cut short; the snapshot covers the packets before the cut", zap.Error(ce))
				return nil
			}
			return fmt.Errorf("%w; the snapshot of the packets before it was written to %s", ce, out)
		}
		return nil
	}
}

// logReplay reports what the replay did, loudly where data was lost.
func logReplay(log *zap.Logger, r *replay.Result, out string) {
	st := r.Snapshot.Stats
	lts := make([]string, 0, len(r.LinkType))
	for lt, n := range r.LinkType {
		lts = append(lts, fmt.Sprintf("%s: %d", replay.LinkTypeName(lt), n))
	}
	sort.Strings(lts)
	rate := 0.0
	if r.Elapsed > 0 {
		rate = float64(r.Replayed) / r.Elapsed.Seconds()
	}
	log.Info("replayed", zap.String("format", r.Format), zap.Strings("link_types", lts), zap.Int("packets", r.Packets),
		zap.Int("replayed", r.Replayed), zap.Bool("per_packet", r.PerPacket), zap.Int("test_run_calls", r.Calls),
		zap.Int("batches_run_early", r.Flushes), zap.Uint64("ingress", st.PacketsIngress),
		zap.Uint64("egress", st.PacketsEgress), zap.Int("flows", len(r.Snapshot.Flows)),
		seconds("window_seconds", r.Snapshot.Window()), seconds("time_resolution_seconds", r.Resolution),
		seconds("elapsed_seconds", r.Elapsed.Round(time.Millisecond)), zap.Float64("packets_per_second", math.Round(rate)))
	for reason, n := range r.Skipped {
		log.Warn("records not replayed", zap.String("reason", reason), zap.Int("records", n))
	}
	if r.Snapped > 0 || r.Cut > 0 {
		log.Warn("byte counts are short of the wire: frames were cut by the capture's snap length or to the test_run limit",
			zap.Int("snapped", r.Snapped), zap.Int("cut_to_max_frame", r.Cut), zap.Uint64("missing_bytes", r.MissingBytes))
	}
	if st.Lossy() {
		log.Warn("flow map full: some packets were not counted; raise --max-flows", zap.Uint64("insert_failed", st.FlowInsertFailed))
	}
	log.Info("snapshot written", zap.String("file", out), zap.Int("flows", len(r.Snapshot.Flows)))
}

func parsePrefixes(vals []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range vals {
		v = strings.TrimSpace(v)
		if strings.Contains(v, "/") {
			p, err := netip.ParsePrefix(v)
			if err != nil {
				return nil, usageErrorf("--local-addr %q: %w", v, err)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, usageErrorf("--local-addr %q: not an address or prefix", v)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

func parseListening(vals []string) ([]snapshot.Socket, error) {
	var out []snapshot.Socket
	for _, v := range vals {
		ps, port, ok := strings.Cut(strings.TrimSpace(v), "/")
		p, err := snapshot.ParseProto(ps)
		if !ok || err != nil || !p.HasPorts() {
			return nil, usageErrorf("--listening %q: want tcp/PORT, udp/PORT or sctp/PORT", v)
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return nil, usageErrorf("--listening %q: port must be 1-65535", v)
		}
		addr := netip.IPv4Unspecified()
		out = append(out, snapshot.Socket{Proto: p, Addr: addr, Port: uint16(n)})
	}
	return out, nil
}

func parsePortRange(s string) ([2]uint16, error) {
	lo, hi, ok := strings.Cut(s, "-")
	a, err1 := strconv.ParseUint(lo, 10, 16)
	b, err2 := strconv.ParseUint(hi, 10, 16)
	if !ok || err1 != nil || err2 != nil || a == 0 || a > b {
		return [2]uint16{}, usageErrorf("--ephemeral-ports %q: want LOW-HIGH, e.g. 32768-60999", s)
	}
	return [2]uint16{uint16(a), uint16(b)}, nil
}

// progressBar draws one line on a terminal: phase, bar, counts, rate, ETA.
type progressBar struct {
	w       io.Writer
	name    string
	phase   string
	start   time.Time
	lastLen int
	drawn   bool
}

func (p *progressBar) update(pr replay.Progress) {
	if p == nil {
		return
	}
	if pr.Phase != p.phase {
		p.phase, p.start = pr.Phase, time.Now()
	}
	frac := 0.0
	if pr.Total > 0 {
		frac = float64(pr.Done) / float64(pr.Total)
	}
	const width = 30
	n := int(frac * width)
	bar := strings.Repeat("#", n) + strings.Repeat(".", width-n)
	var counts string
	el := time.Since(p.start).Seconds()
	if pr.Phase == "scan" {
		counts = fmt.Sprintf("%s / %s", mib(pr.Done), mib(pr.Total))
	} else {
		counts = fmt.Sprintf("%d / %d packets", pr.Done, pr.Total)
		if el > 0 {
			counts += fmt.Sprintf(", %.0f pkts/s", float64(pr.Done)/el)
		}
	}
	eta := ""
	if frac > 0 && frac < 1 && el > 0 {
		eta = fmt.Sprintf(", ETA %s", time.Duration(el/frac*(1-frac)*float64(time.Second)).Round(time.Second))
	}
	line := fmt.Sprintf("%-7s %s [%s] %3.0f%% %s%s", pr.Phase, p.name, bar, 100*frac, counts, eta)
	pad := ""
	if d := p.lastLen - len(line); d > 0 {
		pad = strings.Repeat(" ", d)
	}
	fmt.Fprintf(p.w, "\r%s%s", line, pad)
	p.lastLen, p.drawn = len(line), true
	if pr.Total > 0 && pr.Done >= pr.Total {
		// A phase is complete: end its line, so that log lines written
		// before the next phase starts do not run into it.
		fmt.Fprintln(p.w)
		p.lastLen, p.drawn = 0, false
	}
}

func (p *progressBar) done() {
	if p != nil && p.drawn {
		fmt.Fprintln(p.w)
	}
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
