// Package vocab is the flow vocabulary that the catalog, the snapshot and
// the audit share: who initiated a flow (Direction) and its IP protocol
// (Proto). It imports nothing of flowaudit, so the catalog can use it
// without depending on the snapshot file (audit/snapshot keeps aliases).
package vocab

import (
	"fmt"
	"strconv"
	"strings"
)

// Direction tells who initiated the traffic of a flow, relative to the
// recording host.
type Direction uint8

const (
	// Unknown: neither socket state, handshake nor port heuristic could tell
	// (for example non-first IP fragments).
	Unknown Direction = iota
	// Inbound: a peer connects to a service on this host.
	Inbound
	// Outbound: this host connects to a service on the peer.
	Outbound
)

var directionNames = [...]string{"unknown", "inbound", "outbound"}

func (d Direction) String() string {
	if int(d) < len(directionNames) {
		return directionNames[d]
	}
	return "direction(" + strconv.Itoa(int(d)) + ")"
}

// ParseDirection parses the names produced by String.
func ParseDirection(s string) (Direction, error) {
	for i, n := range directionNames {
		if s == n {
			return Direction(i), nil
		}
	}
	return 0, fmt.Errorf("unknown direction %q (want inbound, outbound or unknown)", s)
}

func (d Direction) MarshalText() ([]byte, error) {
	if int(d) >= len(directionNames) {
		return nil, fmt.Errorf("invalid direction %d", d)
	}
	return []byte(d.String()), nil
}

func (d *Direction) UnmarshalText(b []byte) error {
	v, err := ParseDirection(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Proto is an IP protocol number (IPPROTO_*).
type Proto uint8

// Protocol numbers flowaudit names.
const (
	ICMP   Proto = 1
	TCP    Proto = 6
	UDP    Proto = 17
	GRE    Proto = 47
	ESP    Proto = 50
	AH     Proto = 51
	ICMPv6 Proto = 58
	SCTP   Proto = 132
)

var protoNames = map[Proto]string{
	ICMP: "icmp", TCP: "tcp", UDP: "udp", GRE: "gre", ESP: "esp", AH: "ah",
	ICMPv6: "icmpv6", SCTP: "sctp",
}

// String returns the lower-case protocol name, or "ip-N" for protocols
// without a name here.
func (p Proto) String() string {
	if n, ok := protoNames[p]; ok {
		return n
	}
	return "ip-" + strconv.Itoa(int(p))
}

// HasPorts reports whether flows of this protocol carry a service port.
func (p Proto) HasPorts() bool { return p == TCP || p == UDP || p == SCTP }

// IsICMP reports whether p is ICMP or ICMPv6; their flows carry
// type<<8|code in the port field.
func (p Proto) IsICMP() bool { return p == ICMP || p == ICMPv6 }

// ParseProto accepts a protocol name ("tcp", "gre", …), "ip-N" or a decimal
// protocol number 0–255.
func ParseProto(s string) (Proto, error) {
	ls := strings.ToLower(s)
	for p, n := range protoNames {
		if n == ls {
			return p, nil
		}
	}
	ls = strings.TrimPrefix(ls, "ip-")
	n, err := strconv.ParseUint(ls, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("unknown protocol %q", s)
	}
	return Proto(n), nil
}

func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

func (p *Proto) UnmarshalText(b []byte) error {
	v, err := ParseProto(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}
