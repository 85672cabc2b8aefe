package vocab

import "testing"

func TestNamesRoundTrip(t *testing.T) {
	for _, d := range []Direction{Unknown, Inbound, Outbound} {
		b, err := d.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Direction
		if err := back.UnmarshalText(b); err != nil || back != d {
			t.Errorf("%v → %q → %v, %v", d, b, back, err)
		}
	}
	if _, err := Direction(3).MarshalText(); err == nil {
		t.Error("direction 3 marshalled")
	}
	for _, c := range []struct {
		in   string
		want Proto
	}{{"tcp", TCP}, {"ICMPv6", ICMPv6}, {"ip-253", 253}, {"47", GRE}} {
		if p, err := ParseProto(c.in); err != nil || p != c.want {
			t.Errorf("ParseProto(%q) = %v, %v; want %v", c.in, p, err, c.want)
		}
	}
	if Proto(253).String() != "ip-253" || !SCTP.HasPorts() || !ICMP.IsICMP() || GRE.HasPorts() {
		t.Error("protocol names or classes changed")
	}
	if _, err := ParseProto("ip-256"); err == nil {
		t.Error("ip-256 parsed")
	}
}
