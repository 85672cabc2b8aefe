package main

import (
	"errors"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

func init() {
	register(&command{
		name:     "record",
		summary:  "record what an interface really carries into a snapshot file",
		usage:    "flowaudit record --iface IFACE [--iface ...] --duration D --out FILE",
		examples: recordExamples,
		setup:    setupRecord,
		config:   true,
	})
}

const recordExamples = `  # Ten minutes on the appliance's uplink
  flowaudit record --iface eth0 --duration 10m --out snap.json

  # Two interfaces, a bigger flow map for a busy collector
  flowaudit record -i eth0,eth1 -d 1h --max-flows 1000000 --out snap.json

  # A day, checkpointed every 10 minutes: a crash or power loss keeps the last checkpoint
  flowaudit record -i eth0 -d 24h --checkpoint 10m --out snap.json

  # Ctrl-C or SIGTERM stops early; the snapshot recorded so far is kept and
  # says it was interrupted. --out is checked before anything is attached.`

func setupRecord(fs *pflag.FlagSet) runFunc {
	var (
		lf         liveFlags
		out        string
		checkpoint time.Duration
	)
	lf.register(fs, 10*time.Minute)
	fs.StringVarP(&out, "out", "o", "", "snapshot file to write (atomically; checked before recording starts): NAME.json is plain JSON, any other name the compact encoding (docs/SNAPSHOT.md)")
	fs.DurationVar(&checkpoint, "checkpoint", defaultCheckpoint, "write the snapshot so far to --out at this interval, marked as a checkpoint (0: never)")
	return func(e *env, args []string) error {
		if len(args) > 0 {
			return usageErrorf("unexpected argument %q", args[0])
		}
		if out == "" {
			return usageErrorf("--out is required")
		}
		if err := lf.validate(); err != nil {
			return err
		}
		if checkpoint < 0 {
			return usageErrorf("--checkpoint %s: must not be negative", checkpoint)
		}
		// A recording must never be lost at its end to a path that cannot be
		// written: try it before anything is attached.
		if err := checkWritableFile("--out", out); err != nil {
			return err
		}
		ctx, stop := signalContext()
		defer stop()
		ro := recordOptions{logEvery: lf.logProgress, checkpoint: checkpoint, checkpointPath: out}
		if isTerminal(e.stderr) {
			ro.progress = e.stderr
		}
		snap, err := recordLive(ctx, e, &lf, ro)
		if snap == nil {
			return err
		}
		// Saved even when detaching failed afterwards (err): the recording is
		// good, the command still fails.
		if werr := snapshot.WriteFile(out, snap); werr != nil {
			return errors.Join(err, werr)
		}
		e.log.Info("snapshot written", zap.String("file", out), zap.Int("flows", len(snap.Flows)),
			seconds("window_seconds", snap.Window().Round(time.Second)))
		return err
	}
}
