package snapshot

import (
	"path/filepath"
	"testing"
	"time"
)

// TestWriteNeverFailsOnTime: times JSON cannot carry (a year beyond 9999
// from a pcapng timestamp, a year before 0, a zone offset of a day) are
// written as the nearest representable time or the same instant in UTC;
// the snapshot given to Write is not changed, and the file reads back.
func TestWriteNeverFailsOnTime(t *testing.T) {
	far := time.Unix(1<<44, 0).UTC() // year ~559 000
	past := time.Date(-3, 1, 1, 0, 0, 0, 0, time.UTC)
	odd := time.Date(2026, 11, 26, 8, 0, 0, 0, time.FixedZone("odd", 25*3600))
	s := sample()
	s.End = far
	s.Interrupted = &Interruption{Signal: "SIGTERM", At: odd, PlannedEnd: far}
	s.Flows[0].FirstSeen, s.Flows[0].LastSeen = past, far
	s.Overflow = []Flow{{Interface: "eth0", Direction: Inbound, Proto: TCP, Port: 22, FirstSeen: odd, LastSeen: far}}

	p := filepath.Join(t.TempDir(), "s.json")
	if err := WriteFile(p, s); err != nil {
		t.Fatalf("write: %v", err)
	}
	if !s.End.Equal(far) || !s.Flows[0].FirstSeen.Equal(past) || !s.Interrupted.At.Equal(odd) || s.Interrupted.At.Location() != odd.Location() {
		t.Error("Write changed the snapshot it was given")
	}
	out, err := ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want time.Time
	}{
		{"end", out.End, MaxJSONTime},
		{"start (representable, kept)", out.Start, s.Start},
		{"interrupted at (same instant, UTC)", out.Interrupted.At, odd},
		{"planned end", out.Interrupted.PlannedEnd, MaxJSONTime},
		{"first seen", out.Flows[0].FirstSeen, MinJSONTime},
		{"last seen", out.Flows[0].LastSeen, MaxJSONTime},
		{"overflow first seen", out.Overflow[0].FirstSeen, odd},
	} {
		if !c.got.Equal(c.want) {
			t.Errorf("%s: read back %s, want %s", c.name, c.got.Format(time.RFC3339Nano), c.want.UTC().Format(time.RFC3339Nano))
		}
	}
	if !writableIsSelf(sample()) {
		t.Error("a snapshot whose times are all representable is copied")
	}
}

func writableIsSelf(s *Snapshot) bool { return writable(s) == s }
