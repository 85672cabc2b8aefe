package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
)

func TestProgressLine(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, time.Minute)
	r := &bpf.Read{Stats: snapshot.Stats{PacketsIngress: 10, PacketsEgress: 7}, Flows: []snapshot.Flow{
		{Direction: snapshot.Inbound, Proto: snapshot.TCP, Port: 22, Peer: netip.MustParseAddr("192.0.2.7"), PacketsIn: 5},
	}}
	p.update(5*time.Second, r)
	line := buf.String()
	for _, want := range []string{"\r5s elapsed, 55s left", "10 pkts in, 7 out", "1 flows", "new: in tcp/22 192.0.2.7"} {
		if !strings.Contains(line, want) {
			t.Errorf("progress %q lacks %q", line, want)
		}
	}
	// The next update names only flows not seen before, and reports loss.
	r.Flows = append(r.Flows, snapshot.Flow{Direction: snapshot.Outbound, Proto: snapshot.UDP, Port: 53, Peer: netip.MustParseAddr("192.0.2.53"), PacketsOut: 1})
	r.Stats.FlowInsertFailed = 4
	buf.Reset()
	p.update(6*time.Second, r)
	if l := buf.String(); !strings.Contains(l, "new: out udp/53 192.0.2.53, in tcp/22") || !strings.Contains(l, "MAP FULL: 4 lost") {
		t.Errorf("second progress line %q", l)
	}
	buf.Reset()
	p.done()
	if buf.String() != "\n" {
		t.Errorf("done wrote %q", buf.String())
	}
	// No terminal: nothing at all.
	q := newProgress(nil, time.Minute)
	q.update(time.Second, r)
	q.done()
}
