package snapshot

import "time"

// Times JSON can carry: encoding/json writes a time.Time as RFC 3339, which
// has four-digit years and zone offsets below 24 hours, and fails the whole
// encoding on any other value. The writer never fails on a time: it writes
// the same instant in UTC when only the offset is the problem, else the
// nearest bound. Times come from packet timestamps (replay checks them
// first, docs/REPLAY.md) and the recorder's clock.
var (
	MinJSONTime = time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)
	MaxJSONTime = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
)

// jsonTimeOK reports whether encoding/json can write t.
func jsonTimeOK(t time.Time) bool {
	if y := t.Year(); y < 0 || y > 9999 {
		return false
	}
	_, off := t.Zone()
	return off > -24*3600 && off < 24*3600
}

// JSONTime returns t if JSON can carry it, else the same instant in UTC, or
// the nearest of MinJSONTime and MaxJSONTime when the year is out of range.
func JSONTime(t time.Time) time.Time {
	if jsonTimeOK(t) {
		return t
	}
	u := t.UTC()
	switch {
	case u.Before(MinJSONTime):
		return MinJSONTime
	case u.After(MaxJSONTime):
		return MaxJSONTime
	}
	return u
}

// writable returns s when every time in it can be written as JSON, else a
// copy with those times replaced by JSONTime. s itself is never changed.
func writable(s *Snapshot) *Snapshot {
	ok := jsonTimeOK(s.Start) && jsonTimeOK(s.End) &&
		(s.Interrupted == nil || jsonTimeOK(s.Interrupted.At) && jsonTimeOK(s.Interrupted.PlannedEnd))
	flowsOK := func(fs []Flow) bool {
		for i := range fs {
			if !jsonTimeOK(fs[i].FirstSeen) || !jsonTimeOK(fs[i].LastSeen) {
				return false
			}
		}
		return true
	}
	if ok && flowsOK(s.Flows) && flowsOK(s.Overflow) {
		return s
	}
	c := *s
	c.Start, c.End = JSONTime(s.Start), JSONTime(s.End)
	if s.Interrupted != nil {
		in := *s.Interrupted
		in.At, in.PlannedEnd = JSONTime(in.At), JSONTime(in.PlannedEnd)
		c.Interrupted = &in
	}
	fix := func(fs []Flow) []Flow {
		if fs == nil {
			return nil
		}
		out := make([]Flow, len(fs))
		for i, f := range fs {
			f.FirstSeen, f.LastSeen = JSONTime(f.FirstSeen), JSONTime(f.LastSeen)
			out[i] = f
		}
		return out
	}
	c.Flows, c.Overflow = fix(s.Flows), fix(s.Overflow)
	return &c
}
