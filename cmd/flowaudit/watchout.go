package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit"
	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/internal/events"
	"github.com/flowaudit/flowaudit/internal/metrics"
)

// watchOutputs are where watch reports besides its diagnostic log: the
// event stream (--events) and the Prometheus endpoint (--metrics-addr).
// Both are opened before anything is attached, so a bad target fails
// first.
type watchOutputs struct {
	log *zap.Logger

	sink events.Sink // nil: events go to the diagnostic log
	ectx *events.Context

	metrics *metrics.Metrics // nil: no --metrics-addr
	server  *metrics.Server
	live    atomic.Pointer[liveSession] // what the datapath metrics read
}

// openWatchOutputs opens the event target and the metrics listener.
func openWatchOutputs(e *env, res *resolved, lf *liveFlags, o *watchFlags) (*watchOutputs, error) {
	w := &watchOutputs{log: e.log}
	host, err := os.Hostname()
	if err != nil {
		return nil, fmt.Errorf("hostname: %w", err)
	}
	w.ectx = &events.Context{Hostname: host, Interfaces: append([]string{}, lf.ifaces...), ToolVersion: Version(), Matrix: res.matrix}
	if o.events != "" {
		if w.sink, err = events.Open(o.events, e.stdout, host); err != nil {
			return nil, err
		}
	}
	if o.metricsAddr != "" {
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			w.close()
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
		w.metrics = metrics.New(metrics.Options{Matrix: res.matrix, Site: res.site, MaxExtraPorts: o.metricsPorts,
			Version: Version(), Interval: o.interval, Start: o.started, Datapath: w.datapath})
		w.server = w.metrics.Serve(ln, zapPromLogger{e.log})
		e.log.Info("metrics served", zap.String("url", "http://"+ln.Addr().String()+"/metrics"),
			zap.Int("traffic_series_limit", w.metrics.SeriesLimit()))
		lf.onMove = w.moved
	}
	return w, nil
}

// moved counts one entry leaving the kernel (bpf.Options.OnMove).
func (w *watchOutputs) moved(m *bpf.MovedFlow) {
	w.metrics.AddTraffic(&metrics.Traffic{Direction: m.Direction, Proto: m.Proto, Port: m.Port, Fragment: m.Fragment,
		Peer: m.Peer, PacketsIn: m.PacketsIn, BytesIn: m.BytesIn, PacketsOut: m.PacketsOut, BytesOut: m.BytesOut,
		Evidence: m.Evidence})
}

var errNotRecording = errors.New("not recording")

// datapath reads the recorder's counters for a scrape.
func (w *watchOutputs) datapath() (metrics.Datapath, error) {
	s := w.live.Load()
	if s == nil {
		return metrics.Datapath{}, errNotRecording
	}
	n, err := s.c.Counters()
	if err != nil {
		return metrics.Datapath{}, err
	}
	return metrics.Datapath{PacketsIngress: n.PacketsIngress, PacketsEgress: n.PacketsEgress, FastPathPackets: n.FastPath, FlowInsertFailed: n.FlowInsertFailed,
		OverflowInsertFailed: n.OverflowInsertFailed, ActiveEntries: n.ActiveEntries, FlowCapacity: n.FlowCapacity,
		MemoryEntries: n.Accumulated, FlowBudget: s.lf.flowBudget, Moves: n.Moves, SocketRefreshErrors: s.ref.Failures()}, nil
}

// reopen is SIGHUP with --events FILE: logrotate moved the file.
func (w *watchOutputs) reopen() {
	if err := w.sink.Reopen(); err != nil {
		w.log.Warn("events file not reopened: events keep going to the old one", zap.String("file", w.sink.String()), zap.Error(err))
		return
	}
	w.log.Info("events file reopened", zap.String("file", w.sink.String()))
}

// event reports one watch event: to the event stream if there is one
// (the diagnostic log then has it at debug level), else to the log. An
// event the stream does not take goes to the log at warn: it is never
// lost silently.
func (w *watchOutputs) event(ev watchEvent) {
	if w.metrics != nil {
		w.metrics.Event(string(ev.Event), &ev.Finding)
	}
	if w.sink == nil {
		logEvent(w.log, ev, false)
		return
	}
	e := events.Event{Time: ev.Time, Action: string(ev.Event), Finding: ev.Finding, Previous: ev.Previous,
		FirstReported: ev.FirstReported, LastPresent: ev.LastPresent}
	b, err := events.Encode(w.ectx, &e)
	if err == nil {
		err = w.sink.Write(b, events.SyslogSeverity(&e))
	}
	if err != nil {
		if w.metrics != nil {
			w.metrics.DeliveryFailed()
		}
		w.log.Warn("event not delivered to --events; logged instead", zap.String("target", w.sink.String()), zap.Error(err))
		logEvent(w.log, ev, false)
		return
	}
	logEvent(w.log, ev, true)
}

// evaluated updates the metrics after an evaluation.
func (w *watchOutputs) evaluated(ev *evaluation) {
	if w.metrics != nil {
		w.metrics.Evaluated(ev.end, ev.end.Sub(ev.start), ev.open)
	}
}

// close closes the metrics server and the event target.
func (w *watchOutputs) close() error {
	var errs []error
	if w.server != nil {
		if err := w.server.Close(); err != nil {
			errs = append(errs, fmt.Errorf("metrics server: %w", err))
		}
	}
	if w.sink != nil {
		if err := w.sink.Close(); err != nil {
			errs = append(errs, fmt.Errorf("--events %s: %w", w.sink, err))
		}
	}
	return errors.Join(errs...)
}

// evaluation is what one evaluation leaves for the metrics.
type evaluation struct {
	start, end time.Time
	open       []audit.Finding
}

// zapPromLogger passes promhttp's errors to the diagnostic log.
type zapPromLogger struct{ log *zap.Logger }

func (z zapPromLogger) Println(v ...any) {
	z.log.Warn("metrics scrape", zap.String("error", fmt.Sprint(v...)))
}
