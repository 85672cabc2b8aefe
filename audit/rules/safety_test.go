package rules

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/catalog"
)

// traffic is a small window with documented inbound traffic, so nothing
// but the case under test can refuse it.
func traffic() *snapshot.Snapshot {
	return mksnap(fl("in", "tcp", 9000, "10.1.0.4"), fl("in", "tcp", 22, "192.0.2.10"), fl("out", "udp", 53, "10.9.9.9"))
}

func TestRefusal(t *testing.T) {
	_, m, site := fixture(t)
	cases := []struct {
		name string
		mod  func(*snapshot.Snapshot, *Options)
		want []string // one entry per reason, each a substring
	}{
		{"flow map full: packets lost their peer", func(s *snapshot.Snapshot, o *Options) {
			s.Stats.FlowInsertFailed = 1234
		}, []string{"the kernel flow map (65536 entries) overflowed: 1234 packets lost their peer (counted per service only), 0 packets were not counted at all, 0 flows were evicted"}},
		{"overflow map full too", func(s *snapshot.Snapshot, o *Options) {
			s.Stats.FlowInsertFailed, s.Stats.OverflowInsertFailed = 10, 7
		}, []string{"10 packets lost their peer (counted per service only), 7 packets were not counted at all"}},
		{"LRU evictions", func(s *snapshot.Snapshot, o *Options) {
			s.Stats.FlowEvictions = 3
		}, []string{"3 flows were evicted; peers cut off that way get no rule and would be locked out (record again with a larger --max-flows)"}},
		{"interrupted by a signal", func(s *snapshot.Snapshot, o *Options) {
			s.End = t0.Add(3 * time.Minute)
			s.Interrupted = &snapshot.Interruption{Signal: "SIGINT", At: s.End, PlannedEnd: t0.Add(10 * time.Minute)}
		}, []string{"the recording was interrupted by SIGINT at 2026-11-26T07:03:00Z, 7m0s before its planned end 2026-11-26T07:10:00Z: traffic of the rest of the window was never seen"}},
		{"stopped on an error", func(s *snapshot.Snapshot, o *Options) {
			s.Interrupted = &snapshot.Interruption{Signal: "error", At: s.End, Reason: "read maps: no such device"}
		}, []string{"the recording stopped on an error at 2026-11-26T07:10:00Z (read maps: no such device)"}},
		{"interrupted, signal not named (Go API)", func(s *snapshot.Snapshot, o *Options) {
			s.Interrupted = &snapshot.Interruption{}
		}, []string{"the recording was interrupted by a signal at 2026-11-26T07:10:00Z: traffic of the rest of the window was never seen"}},
		{"a checkpoint", func(s *snapshot.Snapshot, o *Options) {
			s.Checkpoint = true
		}, []string{"the snapshot is a checkpoint, written while the recording was still running (10m0s recorded by then, until 2026-11-26T07:10:00Z)"}},
		{"window below --min-window", func(s *snapshot.Snapshot, o *Options) {
			s.End = t0.Add(20 * time.Second)
		}, []string{"the observation window is 20s, below --min-window 1m0s"}},
		{"a longer --min-window", func(s *snapshot.Snapshot, o *Options) {
			o.MinWindow = time.Hour
		}, []string{"the observation window is 10m0s, below --min-window 1h0m0s"}},
		{"a live recording stopped before --duration, without an interruption mark", func(s *snapshot.Snapshot, o *Options) {
			o.PlannedWindow = 30 * time.Minute
		}, []string{"the live recording was interrupted (SIGINT or SIGTERM) after 10m0s of the planned 30m0s (--duration)"}},
		{"every reason at once, in one error", func(s *snapshot.Snapshot, o *Options) {
			s.Stats.FlowInsertFailed = 5
			s.End = t0.Add(30 * time.Second)
			s.Interrupted = &snapshot.Interruption{Signal: "SIGTERM", At: s.End, PlannedEnd: t0.Add(time.Hour)}
			s.Checkpoint = true
		}, []string{"5 packets lost their peer", "interrupted by SIGTERM at 2026-11-26T07:00:30Z, 59m30s before its planned end", "is a checkpoint",
			"the observation window is 30s, below --min-window 1m0s"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := traffic()
			o := Options{Matrix: m, Site: site}
			tc.mod(s, &o)
			_, err := Build(s, o)
			var re *RefusedError
			if !errors.Is(err, ErrRefused) || !errors.As(err, &re) {
				t.Fatalf("err %v, want a *RefusedError", err)
			}
			if len(re.Reasons) != len(tc.want) {
				t.Errorf("%d reasons, want %d: %q", len(re.Reasons), len(tc.want), re.Reasons)
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message lacks %q:\n%s", w, msg)
				}
			}
			if !strings.Contains(msg, "--force") {
				t.Errorf("message does not name --force:\n%s", msg)
			}

			// --force: written, each reason first among the warnings and
			// in the header of every target.
			o.Force = true
			rs, err := Build(s, o)
			if err != nil {
				t.Fatal(err)
			}
			if len(rs.Forced) != len(re.Reasons) {
				t.Fatalf("forced %q, want %q", rs.Forced, re.Reasons)
			}
			for i, r := range re.Reasons {
				if rs.Warnings[i] != "FORCED (--force): "+r {
					t.Errorf("warning %d is %q, want the reason %q", i, rs.Warnings[i], r)
				}
			}
			for _, target := range Targets {
				var buf bytes.Buffer
				if err := Render(&buf, rs, target, RenderOptions{}); err != nil {
					t.Fatalf("%s: %v", target, err)
				}
				out := buf.String()
				for _, r := range re.Reasons {
					if !strings.Contains(out, "FORCED (--force): "+r) {
						t.Errorf("%s lacks the warning %q", target, r)
					}
				}
				if target != AWSSG && !strings.Contains(out, "WARNINGS:\n# "+"  FORCED (--force): ") {
					t.Errorf("%s: the forced reasons do not head the WARNINGS", target)
				}
			}
		})
	}

	// A complete snapshot is not refused, and the engine's duplicates of
	// the refusal reasons are not repeated as "audit incomplete".
	if rs, err := Build(traffic(), Options{Matrix: m, Site: site}); err != nil || len(rs.Forced) != 0 {
		t.Fatalf("complete snapshot: %v %q", err, rs.Forced)
	}
	s := traffic()
	s.Stats.FlowInsertFailed = 9
	rs, err := Build(s, Options{Matrix: m, Site: site, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(rs.Warnings, "\n"); strings.Contains(w, "audit incomplete: the flow map") {
		t.Errorf("the map-full reason is said twice:\n%s", w)
	}
	// Mode documented allows the zones whatever the traffic: the
	// snapshot's reasons are warnings there, your own session is not.
	s = traffic()
	s.Stats.FlowInsertFailed, s.End = 9, t0.Add(10*time.Second)
	rs, err = Build(s, Options{Mode: Documented, Matrix: m, Site: site})
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(rs.Warnings, "\n"); len(rs.Forced) != 0 || strings.Count(w, "incomplete snapshot (mode documented allows the zones without it") != 2 {
		t.Errorf("documented mode: forced %q, warnings:\n%s", rs.Forced, w)
	}
	if err := Precheck(Options{Mode: Documented, Matrix: m, Site: site, PlannedWindow: time.Second}); err != nil {
		t.Errorf("documented mode, short planned window: %v", err)
	}
	own := []Session{{Peer: netip.MustParseAddr("198.51.100.7"), Service: Service{snapshot.TCP, 22}, Why: "SSH_CONNECTION"}}
	if _, err := Build(s, Options{Mode: Documented, Matrix: m, Site: site, Sessions: own}); !errors.Is(err, ErrRefused) {
		t.Errorf("documented mode, own session outside the zones: %v", err)
	}

	// Folding (memory budget) is not a refusal: its peers are listed, and
	// a warning says they get no rule.
	s = traffic()
	s.Stats.FoldedFlows, s.Stats.FlowBudget = 40, 262144
	rs, err = Build(s, Options{Matrix: m, Site: site})
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(rs.Warnings, "\n"); !strings.Contains(w, "the recorder folded 40 per-peer entries into prefixes to stay within its memory budget (262144 flow entries)") {
		t.Errorf("no folding warning:\n%s", w)
	}
}

func TestPrecheck(t *testing.T) {
	_, m, site := fixture(t)
	outsider := Session{Peer: netip.MustParseAddr("198.51.100.7"), Service: Service{snapshot.TCP, 22}, Why: "SSH_CONNECTION"}
	admin := Session{Peer: netip.MustParseAddr("::ffff:192.0.2.10"), Service: Service{snapshot.TCP, 22}, Why: "SSH_CONNECTION"}
	odd := Session{Peer: netip.MustParseAddr("192.0.2.10"), Service: Service{snapshot.TCP, 2222}, Why: "SSH_CONNECTION"}
	for _, tc := range []struct {
		name string
		o    Options
		want string // "" : accepted
	}{
		{"a planned window below --min-window", Options{Matrix: m, Site: site, PlannedWindow: 20 * time.Second},
			"the planned observation window (--duration 20s) is below --min-window 1m0s"},
		{"a planned window at --min-window", Options{Matrix: m, Site: site, PlannedWindow: time.Minute}, ""},
		{"your session from outside the zone", Options{Matrix: m, Site: site, Sessions: []Session{outsider}},
			"your own session, inbound tcp/22 from 198.51.100.7 (SSH_CONNECTION), is outside every zone the matrix allows for tcp/22 (fix1.server.ssh: zone ADMIN_IP): the rules would lock you out when applied; bind 198.51.100.7 in the site file"},
		{"your session on a port the matrix does not document", Options{Matrix: m, Site: site, Sessions: []Session{odd}},
			"(the matrix documents no inbound tcp/2222): the rules would lock you out when applied; log in through a service the matrix documents"},
		{"your session from the admin zone (IPv4-mapped)", Options{Matrix: m, Site: site, Sessions: []Session{admin}}, ""},
		{"forced", Options{Matrix: m, Site: site, Sessions: []Session{outsider}, PlannedWindow: time.Second, Force: true}, ""},
		{"guard off: your session is not checked", Options{Matrix: m, Site: site, Sessions: []Session{outsider}, NoManagementGuard: true}, ""},
		{"no matrix: no zone to check", Options{Sessions: []Session{outsider}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Precheck(tc.o)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (!errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err %v, want %q", err, tc.want)
			}
			// Build checks the sessions again (the window it judges
			// from the snapshot).
			if tc.want != "" && len(tc.o.Sessions) > 0 {
				if _, err := Build(traffic(), tc.o); !errors.Is(err, ErrRefused) {
					t.Errorf("Build: %v", err)
				}
			}
		})
	}
}

// TestGuardZones: the guard keeps only peers inside a zone the matrix
// allows for the service.
func TestGuardZones(t *testing.T) {
	_, m, site := fixture(t)
	// An outsider's failed SSH login over IPv6: handshake and banner
	// exchange (data both ways), then authentication fails — a "session
	// opened in the window" for the flow counters.
	failed := fl("in", "tcp", 22, "2001:db8:bad::66")
	failed.PacketsIn, failed.PacketsOut = 6, 5
	idle := Session{Peer: netip.MustParseAddr("2001:db8:a::10"), Service: Service{snapshot.TCP, 22}, Why: "SSH_CONNECTION"}

	for _, mode := range []Mode{Both, Documented} {
		t.Run(string(mode), func(t *testing.T) {
			rs := build(t, mksnap(append(traffic().Flows, failed)...), Options{Mode: mode, Matrix: m, Site: site})
			for _, a := range rs.Allows {
				if a.Proto != snapshot.TCP || (len(a.Ports) > 0 && !portsHave(a.Ports, 22)) {
					continue
				}
				if a.AnyPeer {
					t.Errorf("tcp/22 allowed from any IPv6 peer: %s", a.Summary())
				}
				for _, p := range a.Peers {
					if p.Contains(failed.Peer) {
						t.Errorf("the outsider is allowed: %s (%s)", a.Summary(), a.Why())
					}
				}
			}
			if mg := strings.Join(rs.Management, "\n"); !strings.Contains(mg, "inbound tcp/22 from 2001:db8:bad::66 (session opened in the window) is NOT kept: the peer is outside every zone the matrix allows for tcp/22 (fix1.server.ssh: zone ADMIN_IP); listed under Observed but NOT allowed") {
				t.Errorf("management:\n%s", mg)
			}
			found := false
			for _, l := range rs.NotAllowed {
				if strings.HasPrefix(l.String(), "inbound tcp/22 from 2001:db8:bad::66: peer outside zone ADMIN_IP (fix1.server.ssh)") {
					found = l.Undocumented
				}
			}
			if !found {
				t.Errorf("the outsider is not listed (as undocumented) under Observed but NOT allowed: %v", rs.NotAllowed)
			}
		})
	}

	// In zone: an observed session stays allowed by its rule; your idle
	// session (no traffic in the window) is kept by the guard.
	rs := build(t, traffic(), Options{Matrix: m, Site: site, Sessions: []Session{idle}})
	mg := strings.Join(rs.Management, "\n")
	if !strings.Contains(mg, "inbound tcp/22 from 192.0.2.10 (session opened in the window) stays allowed by fix1.server.ssh") ||
		!strings.Contains(mg, "inbound tcp/22 from 2001:db8:a::10 (SSH_CONNECTION) is KEPT by the management guard although no rule allows it: the peer is inside fix1.server.ssh: zone ADMIN_IP, which the matrix allows for tcp/22") {
		t.Errorf("management:\n%s", mg)
	}
	if !strings.Contains(allowText(rs), "in v6 tcp 22 2001:db8:a::10/128 [management-guard] mgmt") {
		t.Errorf("idle in-zone session not kept:\n%s", allowText(rs))
	}

	// Your own session from outside every zone: refused (TestPrecheck);
	// with --force kept, and said so loudly.
	own := Session{Peer: netip.MustParseAddr("198.51.100.7"), Service: Service{snapshot.TCP, 22}, Why: "SSH_CONNECTION"}
	rs = build(t, traffic(), Options{Matrix: m, Site: site, Sessions: []Session{own}, Force: true})
	if !strings.Contains(allowText(rs), "in v4 tcp 22 198.51.100.7/32 [management-guard] mgmt") {
		t.Errorf("forced own session not kept:\n%s", allowText(rs))
	}
	w := strings.Join(rs.Warnings, "\n")
	if !strings.HasPrefix(w, "FORCED (--force): your own session, inbound tcp/22 from 198.51.100.7") ||
		!strings.Contains(w, "your own session, inbound tcp/22 from 198.51.100.7 (SSH_CONNECTION), is kept by a management-guard rule although its peer is outside every zone") {
		t.Errorf("warnings:\n%s", w)
	}
	if mg := strings.Join(rs.Management, "\n"); !strings.Contains(mg, "is KEPT because of --force although no rule allows it and the peer is outside every zone the matrix allows for tcp/22") {
		t.Errorf("management:\n%s", mg)
	}

	// Without a matrix there is no zone: observed sessions are allowed by
	// the observed rules, your idle session is kept.
	rs = build(t, traffic(), Options{Sessions: []Session{own}})
	if !strings.Contains(allowText(rs), "in v4 tcp 22 198.51.100.7/32 [management-guard] mgmt") ||
		!strings.Contains(strings.Join(rs.Management, "\n"), "(no matrix to check its zone against)") {
		t.Errorf("no matrix:\n%s\n%q", allowText(rs), rs.Management)
	}

	// Guard off: your session is not kept, and a warning says it is cut.
	rs = build(t, traffic(), Options{Matrix: m, Site: site, Sessions: []Session{own}, NoManagementGuard: true})
	if strings.Contains(allowText(rs), "198.51.100.7") ||
		!strings.Contains(strings.Join(rs.Warnings, "\n"), "the management guard is off and no rule allows your own session, inbound tcp/22 from 198.51.100.7 (SSH_CONNECTION): applying these rules cuts it") {
		t.Errorf("guard off:\n%s\n%q", allowText(rs), rs.Warnings)
	}
}

// lostSnapshot adds folded and overflow entries — peers the snapshot does
// not know — to traffic(): on a documented zone port, on a port the
// matrix opens to anyone (where a peerless flow would match "any"), on
// the SSH port (a spoofed SYN flood), on an undocumented port, outbound,
// and one flow with neither peer nor prefix.
func lostSnapshot() *snapshot.Snapshot {
	s := traffic()
	s.Stats.FlowInsertFailed, s.Stats.FoldedFlows, s.Stats.FlowBudget = 50000, 300, 1000
	folded := func(dir, proto string, port uint16, prefix string, peers ...string) snapshot.Flow {
		f := fl(dir, proto, port, "192.0.2.1")
		f.Peer, f.PeerPrefix = netip.Addr{}, netip.MustParsePrefix(prefix)
		f.PeerSketch = &snapshot.PeerSketch{}
		for _, p := range peers {
			f.PeerSketch.Add(netip.MustParseAddr(p))
		}
		f.Peers = f.PeerSketch.Estimate()
		return f
	}
	s.Flows = append(s.Flows,
		folded("in", "tcp", 9000, "10.1.0.0/24", "10.1.0.20", "10.1.0.21", "10.1.0.22"),
		folded("in", "tcp", 9000, "10.1.1.0/24", "10.1.1.20"),
		folded("in", "tcp", 80, "0.0.0.0/0", "198.51.100.1", "198.51.100.2"),
		folded("in", "tcp", 22, "::/0", "2001:db8:bad::1"),
		folded("out", "udp", 53, "10.9.9.0/24", "10.9.9.11"),
	)
	nopeer := fl("in", "tcp", 443, "192.0.2.1")
	nopeer.Peer = netip.Addr{}
	s.Flows = append(s.Flows, nopeer)
	flood := fl("in", "tcp", 22, "192.0.2.1")
	flood.Peer, flood.PacketsIn, flood.PacketsOut = netip.Addr{}, 50000, 50000
	flood.Evidence = snapshot.Evidence{SynIn: 50000, SynAckOut: 50000}
	flood.PeerSketch = &snapshot.PeerSketch{}
	for i := 0; i < 2000; i++ {
		flood.PeerSketch.Add(netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(i)}))
	}
	flood.Peers = flood.PeerSketch.Estimate()
	redis := fl("in", "tcp", 6379, "192.0.2.1")
	redis.Peer = netip.Addr{}
	s.Overflow = []snapshot.Flow{flood, redis}
	return s
}

// TestLostPeersNeverRules: folded and overflow entries never become
// rules, in any mode, and are listed with their reason.
func TestLostPeersNeverRules(t *testing.T) {
	_, m, site := fixture(t)
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"both", Options{Matrix: m, Site: site}},
		{"observed with a matrix", Options{Mode: Observed, Matrix: m, Site: site}},
		{"observed without a matrix", Options{}},
		{"documented", Options{Mode: Documented, Matrix: m, Site: site}},
		{"aggregate", Options{Matrix: m, Site: site, Aggregate4: 16, Aggregate6: 48}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Force = true
			clean := build(t, traffic(), tc.o)
			rs := build(t, lostSnapshot(), tc.o)
			// The lost entries add nothing: the allowances are those of
			// the same window without them.
			if got, want := allowText(rs), allowText(clean); got != want {
				t.Errorf("lost peers changed the allowances:\n%s\nwant:\n%s", got, want)
			}
			var left []string
			for _, l := range rs.NotAllowed {
				left = append(left, l.String())
			}
			all := strings.Join(left, "\n")
			flood := lostSnapshot().Overflow[0].PeerSketch.Estimate()
			for _, want := range []string{
				fmt.Sprintf("inbound tcp/22 from about %d unknown peers (100000 packets): peer identity lost: flow map full", flood),
				"inbound tcp/22 from about 1 unknown peer (19 packets): peers folded into ::/0 (other peers): memory budget of the recorder reached; no rule is made from a folded prefix",
				"inbound tcp/80 from about 2 unknown peers (19 packets): peers folded into 0.0.0.0/0 (other peers): memory budget",
				"inbound tcp/443 from unknown peers (19 packets): no peer recorded",
				"inbound tcp/6379 from unknown peers (19 packets): peer identity lost: flow map full",
				"inbound tcp/9000 from about 4 unknown peers (38 packets): peers folded into 10.1.0.0/24, 10.1.1.0/24: memory budget",
				"outbound udp/53 to about 1 unknown peer (19 packets): peers folded into 10.9.9.0/24: memory budget",
			} {
				if !strings.Contains(all, want) {
					t.Errorf("not-allowed list lacks %q:\n%s", want, all)
				}
			}
			if tc.o.Matrix != nil && rs.Undocumented != clean.Undocumented+1 {
				t.Errorf("undocumented %d, want %d + 1 (the answered overflow on 6379)", rs.Undocumented, clean.Undocumented)
			}
			// Every target renders it.
			for _, target := range Targets {
				var buf bytes.Buffer
				if err := Render(&buf, rs, target, RenderOptions{}); err != nil {
					t.Fatalf("%s: %v", target, err)
				}
				if !strings.Contains(buf.String(), "peer identity lost: flow map full") {
					t.Errorf("%s does not list the lost peers", target)
				}
			}
		})
	}
}

func portsHave(rs []catalog.PortRange, port uint16) bool {
	for _, r := range rs {
		if r.Contains(port) {
			return true
		}
	}
	return false
}
