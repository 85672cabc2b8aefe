package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/bpf/replay"
)

// Part 5: replay throughput — a capture fed through flowaudit's programs
// with BPF_PROG_TEST_RUN (bpf/replay, `flowaudit replay`).

type replayResult struct {
	packets   int
	replayed  int
	calls     int
	flows     int
	fileBytes int64
	minLen    int
	maxLen    int
	elapsed   time.Duration // replay pass (Result.Elapsed)
	total     time.Duration // whole replay.Run: scan pass, map reset, replay, snapshot
	open      time.Duration // bpf.Open of the collector (program load), not in total
	// perPacket: the same capture through the per-packet path (one
	// test_run per frame, time slices) for comparison; nil if not run.
	perPacket *replayResult
	// tshark -q -z conv,tcp on the same file, right after (wall clock);
	// tsharkErr when it could not run.
	tshark    time.Duration
	tsharkErr error
}

// Issue 16's replay targets.
const (
	replayTargetVsTshark = 2.0 // flowaudit's whole run at least twice tshark's rate
	replayTargetPPS      = 1e6
)

// vsTshark is tshark's time over flowaudit's (whole run): > 1 is faster.
func (r *replayResult) vsTshark() float64 { return r.tshark.Seconds() / r.total.Seconds() }

// runTshark times `tshark -q -z conv,tcp -r path` (TCP conversations, as a
// user would summarise a capture), output discarded.
func runTshark(path string) (time.Duration, error) {
	bin, err := exec.LookPath("tshark")
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-n", "-q", "-z", "conv,tcp", "-r", path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("tshark: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return time.Since(t0), nil
}

func (r *replayResult) pps() float64      { return float64(r.replayed) / r.elapsed.Seconds() }
func (r *replayResult) totalPPS() float64 { return float64(r.replayed) / r.total.Seconds() }

// writeCapture writes n Ethernet frames of a busy host (192.0.2.10) to a
// pcap file: conversations of inbound TCP to 443, outbound TCP to 443,
// inbound syslog and outbound DNS with conv distinct peers, one frame per
// millisecond, alternating directions within a conversation.
func writeCapture(path string, n, conv int) (size int64, minLen, maxLen int, err error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		return 0, 0, 0, err
	}
	// Templates: [kind][0 = peer→local, 1 = local→peer].
	var tmpl [4][2][]byte
	for dir := 0; dir < 2; dir++ {
		in := dir == 0
		e := dirOf(in)
		mk := func(p layers.IPProtocol, l4 gopacket.SerializableLayer, payload int) []byte {
			ip := e.ip4(p)
			switch t := l4.(type) {
			case *layers.TCP:
				t.SetNetworkLayerForChecksum(ip) //nolint:errcheck // IPv4 is always accepted
			case *layers.UDP:
				t.SetNetworkLayerForChecksum(ip) //nolint:errcheck
			}
			return padFrame(serialize(e.eth(layers.EthernetTypeIPv4), ip, l4, gopacket.Payload(make([]byte, payload))))
		}
		swap := func(a, b uint16) (uint16, uint16) {
			if in {
				return a, b
			}
			return b, a
		}
		s, d := swap(40000, 443)
		tmpl[0][dir] = mk(layers.IPProtocolTCP, tcpAck(s, d), 100) // a peer uses our HTTPS
		s, d = swap(443, 50000)
		tmpl[1][dir] = mk(layers.IPProtocolTCP, tcpAck(s, d), 100) // we use the peer's HTTPS
		s, d = swap(41000, 514)
		tmpl[2][dir] = mk(layers.IPProtocolUDP, udpHdr(s, d), 120) // syslog to us
		s, d = swap(53, 51000)
		tmpl[3][dir] = mk(layers.IPProtocolUDP, udpHdr(s, d), 40) // our DNS queries
	}
	start := time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)
	buf := make([]byte, 0, 256)
	for i := 0; i < n; i++ {
		c := i % conv
		kind := c % 4
		dir := (i / conv) % 2
		if kind == 2 {
			dir = 0 // syslog is one-way
		}
		buf = append(buf[:0], tmpl[kind][dir]...)
		peer := netip.AddrFrom4([4]byte{198, 18 + byte(c>>16)&1, byte(c >> 8), byte(c)}) // 198.18.0.0/15
		off := 26                                                                        // IPv4 source
		if dir == 1 {
			off = 30 // destination
		}
		a := peer.As4()
		copy(buf[off:off+4], a[:])
		binary.BigEndian.PutUint16(buf[24:], 0)
		binary.BigEndian.PutUint16(buf[24:], ipv4Checksum(buf[14:34]))
		ci := gopacket.CaptureInfo{Timestamp: start.Add(time.Duration(i) * time.Millisecond), CaptureLength: len(buf), Length: len(buf)}
		if err := w.WritePacket(ci, buf); err != nil {
			return 0, 0, 0, err
		}
		if minLen == 0 || len(buf) < minLen {
			minLen = len(buf)
		}
		maxLen = max(maxLen, len(buf))
	}
	if err := f.Sync(); err != nil {
		return 0, 0, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		return 0, 0, 0, err
	}
	return st.Size(), minLen, maxLen, nil
}

func ipv4Checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// measureReplay writes the capture and replays it through the batch path
// (the default worker count: one per CPU but one), then tshark, then the
// per-packet path for comparison.
func measureReplay(tmp string, n, conv int, logf func(string, ...any)) (*replayResult, error) {
	path := filepath.Join(tmp, "replay.pcap")
	size, minLen, maxLen, err := writeCapture(path, n, conv)
	if err != nil {
		return nil, fmt.Errorf("write capture: %w", err)
	}
	defer os.Remove(path)
	stop := profileStep("replay")
	r, err := replayOnce(path, n, replay.Options{})
	stop()
	if err != nil {
		return nil, err
	}
	r.fileBytes, r.minLen, r.maxLen = size, minLen, maxLen
	logf("  batch path: %d packets, %d flows: replay pass %s (%.2f Mpps), whole run %s (%.2f Mpps), %.3f test_run calls per packet; collector load %s",
		r.replayed, r.flows, r.elapsed.Round(time.Millisecond), r.pps()/1e6, r.total.Round(time.Millisecond), r.totalPPS()/1e6,
		float64(r.calls)/float64(r.replayed), r.open.Round(time.Millisecond))
	r.tshark, r.tsharkErr = runTshark(path)
	if r.tsharkErr == nil {
		logf("  tshark -q -z conv,tcp on the same file: %s (flowaudit %.2f× its rate)", r.tshark.Round(time.Millisecond), r.vsTshark())
	}
	old, err := replayOnce(path, n, replay.Options{PerPacket: true})
	if err != nil {
		return nil, fmt.Errorf("per-packet path: %w", err)
	}
	r.perPacket = old
	logf("  per-packet path: replay pass %s (%.2f Mpps), whole run %s (%.2f Mpps), %.3f test_run calls per packet; collector load %s",
		old.elapsed.Round(time.Millisecond), old.pps()/1e6, old.total.Round(time.Millisecond), old.totalPPS()/1e6,
		float64(old.calls)/float64(old.replayed), old.open.Round(time.Millisecond))
	return r, nil
}

// replayOnce opens a collector with the programs o needs and replays the
// capture of n packets once, checking that every packet was counted.
func replayOnce(path string, n int, o replay.Options) (*replayResult, error) {
	o.Local = []netip.Prefix{netip.PrefixFrom(local4, 32)}
	t0 := time.Now()
	c, err := bpf.Open(bpf.Options{EphemeralPorts: replay.DefaultEphemeralPorts, Programs: replay.Programs(o), DNSRing: replay.DNSRing})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	open := time.Since(t0)
	t0 = time.Now()
	res, err := replay.Run(context.Background(), c, path, o)
	total := time.Since(t0)
	if err != nil {
		return nil, err
	}
	r := &replayResult{packets: res.Packets, replayed: res.Replayed, calls: res.Calls, flows: len(res.Snapshot.Flows),
		elapsed: res.Elapsed, total: total, open: open}
	if r.replayed != n {
		return nil, fmt.Errorf("replayed %d of %d frames", r.replayed, n)
	}
	var counted uint64
	for _, f := range res.Snapshot.Flows {
		counted += f.Packets()
	}
	if counted != uint64(n) {
		return nil, fmt.Errorf("replay counted %d packets in its flows, the capture has %d", counted, n)
	}
	// Speed may not cost answers: the capture's DNS answers all reach the
	// snapshot (docs/REPLAY.md).
	if d := res.Snapshot.DNS; d != nil && d.Dropped > 0 {
		return nil, fmt.Errorf("replay dropped %d of %d DNS answers (ring full)", d.Dropped, d.Dropped+d.Answers)
	}
	return r, nil
}
