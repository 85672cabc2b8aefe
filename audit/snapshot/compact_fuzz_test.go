package snapshot

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// FuzzReadCompact: the compact decoder never panics and never allocates
// for entries it was not given, and whatever it accepts is a valid
// snapshot that encodes back to the same snapshot.
//
//	go test ./audit/snapshot -run '^$' -fuzz FuzzReadCompact -fuzztime 1m
func FuzzReadCompact(f *testing.F) {
	f.Add(compactBytes(f, sample()))
	f.Add(compactBytes(f, syntheticFlows(40)))
	full := fullSnapshot(&testing.T{})
	f.Add(compactBytes(f, full))
	old := preallocLimit
	preallocLimit = 1 << 10
	f.Cleanup(func() { preallocLimit = old })
	f.Fuzz(func(t *testing.T, data []byte) {
		if !IsCompact(data) {
			return // the JSON decoder is encoding/json's
		}
		s, err := Read(bytes.NewReader(data), "fuzz.fas")
		if err != nil {
			if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrNewerVersion) {
				t.Fatalf("error is neither malformed nor newer: %v", err)
			}
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("accepted an invalid snapshot: %v", err)
		}
		again, err := Read(bytes.NewReader(compactBytes(t, s)), "again.fas")
		if err != nil {
			t.Fatalf("re-encoded snapshot does not read: %v", err)
		}
		again.Unknown = s.Unknown
		if !reflect.DeepEqual(s, again) {
			t.Fatalf("re-encoding changed the snapshot:\n%+v\n%+v", s, again)
		}
	})
}
