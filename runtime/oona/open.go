package oona

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/esper/kasmina-host/contracts"
)

// Bus is what Open returns: RedisBus or EmbeddedBus. The runtime keeps its
// own smaller interface (a publisher) and is handed one of these.
type Bus interface {
	// Publish queues msg without blocking.
	Publish(msg contracts.OonaMessage) error
	// PublishPayload queues a new message carrying p without blocking.
	PublishPayload(topic contracts.TopicName, senderID, traceID string, p Payload) error
	// Flush waits until everything published so far is delivered or dropped.
	Flush(ctx context.Context) error
	// Close flushes until ctx ends and releases the bus.
	Close(ctx context.Context) error
	// Stats returns the publisher counters.
	Stats() Stats
	// ConsumerStats returns the consumer counters.
	ConsumerStats() ConsumerStats
	// ConsumeCommands runs the control.kasmina.commands consumer until ctx ends.
	ConsumeCommands(ctx context.Context, h CommandHandler) error
	// ConsumeEpochs runs the system.events.epoch consumer until ctx ends.
	ConsumeEpochs(ctx context.Context, fn EpochFunc) error
}

var (
	_ Bus = (*RedisBus)(nil)
	_ Bus = (*EmbeddedBus)(nil)
)

// Open returns the bus cfg selects: RedisBus when cfg.URL is set, otherwise
// the EmbeddedBus writing JSON lines to cfg.EmbeddedPath (stdout for "" or
// "-"). It fails only on configuration errors; an unreachable Redis is
// retried in the background.
func Open(ctx context.Context, cfg Config, logger *slog.Logger) (Bus, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.URL != "" {
		return NewRedisBus(ctx, cfg, logger)
	}
	var (
		w      io.Writer = os.Stdout
		closer io.Closer
	)
	if cfg.EmbeddedPath != "" && cfg.EmbeddedPath != "-" {
		f, err := os.OpenFile(cfg.EmbeddedPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("oona: opening embedded bus output %s: %w", cfg.EmbeddedPath, err)
		}
		w, closer = f, f
	}
	logger.Info("oona: no Redis configured (--oona / REDIS_URL); using the embedded bus", slog.String("output", orDefault(cfg.EmbeddedPath, "stdout")))
	return NewEmbeddedBus(w, closer, cfg, logger), nil
}

func orDefault(s, def string) string {
	if s == "" || s == "-" {
		return def
	}
	return s
}
