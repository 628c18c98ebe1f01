package oona

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats is a snapshot of a publisher's counters. The accounting identity
// Published == Delivered + Dropped + Buffered holds at every snapshot.
type Stats struct {
	// Published counts messages accepted by Publish.
	Published uint64
	// Delivered counts messages the sink acknowledged (Redis replied to
	// the XADD, or the JSON line was written).
	Delivered uint64
	// Dropped counts messages given up, over all reasons.
	Dropped uint64
	// DroppedByReason splits Dropped by DropOverflow, DropShutdown and
	// DropPermanent.
	DroppedByReason map[string]uint64
	// Buffered is the number of messages held, in flight included.
	Buffered int
	// BufferedBytes is their encoded size.
	BufferedBytes int
	// BufferHighWatermark is the largest Buffered seen.
	BufferHighWatermark int
	// Retries counts backoff waits after a failed write or probe.
	Retries uint64
	// Reconnects counts recoveries after a failure.
	Reconnects uint64
	// Topics holds the per-topic counters.
	Topics map[string]TopicStats
}

// TopicStats are the counters of one topic.
type TopicStats struct {
	// Published counts messages accepted for this topic.
	Published uint64
	// Delivered counts those the sink acknowledged.
	Delivered uint64
	// DroppedByReason counts those given up, by reason.
	DroppedByReason map[string]uint64
}

// ConsumerStats are the counters of a command consumer.
type ConsumerStats struct {
	// Handled counts commands the handler executed successfully.
	Handled uint64
	// Skipped counts commands for layers this host does not serve.
	Skipped uint64
	// Duplicates counts entries whose event_id was already handled.
	Duplicates uint64
	// Malformed counts entries that could not be decoded as a command.
	Malformed uint64
	// DeadLettered counts entries moved to the dead-letter stream
	// (malformed, permanent handler errors, too many deliveries).
	DeadLettered uint64
	// Retried counts transient handler errors left pending for retry.
	Retried uint64
	// Trimmed counts pending entries whose stream entry had been trimmed.
	Trimmed uint64
	// Epochs counts epoch events passed to the epoch callback.
	Epochs uint64
	// EpochsIgnored counts system.events.epoch entries that did not decode
	// to an epoch event (logged as warnings).
	EpochsIgnored uint64
}

// StatsSource is what the Prometheus collector reads: both buses.
type StatsSource interface {
	Stats() Stats
	ConsumerStats() ConsumerStats
}

// Collector exports a bus's counters as Prometheus metrics. It reads a
// fresh snapshot on every scrape; register it on a registry you own.
type Collector struct {
	src StatsSource

	published, delivered, dropped, buffer, bufferBytes, highWater, retries, reconnects, commands *prometheus.Desc
}

// NewCollector returns a collector over src.
func NewCollector(src StatsSource) *Collector {
	return &Collector{
		src:         src,
		published:   prometheus.NewDesc("kasmina_bus_messages_published_total", "Messages accepted by the bus publisher.", []string{"topic"}, nil),
		delivered:   prometheus.NewDesc("kasmina_bus_messages_delivered_total", "Messages acknowledged by the bus (Redis XADD reply or JSON line written).", []string{"topic"}, nil),
		dropped:     prometheus.NewDesc("kasmina_bus_messages_dropped_total", "Messages given up by the bus publisher.", []string{"topic", "reason"}, nil),
		buffer:      prometheus.NewDesc("kasmina_bus_buffer_messages", "Messages held in the publisher buffer, in flight included.", nil, nil),
		bufferBytes: prometheus.NewDesc("kasmina_bus_buffer_bytes", "Encoded bytes held in the publisher buffer.", nil, nil),
		highWater:   prometheus.NewDesc("kasmina_bus_buffer_high_watermark_messages", "Largest number of messages the buffer has held.", nil, nil),
		retries:     prometheus.NewDesc("kasmina_bus_retries_total", "Backoff waits after failed bus writes.", nil, nil),
		reconnects:  prometheus.NewDesc("kasmina_bus_reconnects_total", "Recoveries of the bus after a failure.", nil, nil),
		commands:    prometheus.NewDesc("kasmina_bus_commands_total", "Entries of control.kasmina.commands by outcome.", []string{"outcome"}, nil),
	}
}

// RegisterMetrics registers a collector over src on reg.
func RegisterMetrics(reg prometheus.Registerer, src StatsSource) error {
	return reg.Register(NewCollector(src))
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.published, c.delivered, c.dropped, c.buffer, c.bufferBytes, c.highWater, c.retries, c.reconnects, c.commands} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	topics := make([]string, 0, len(s.Topics))
	for t := range s.Topics {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	for _, t := range topics {
		ts := s.Topics[t]
		ch <- prometheus.MustNewConstMetric(c.published, prometheus.CounterValue, float64(ts.Published), t)
		ch <- prometheus.MustNewConstMetric(c.delivered, prometheus.CounterValue, float64(ts.Delivered), t)
		for r, k := range ts.DroppedByReason {
			ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(k), t, r)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.buffer, prometheus.GaugeValue, float64(s.Buffered))
	ch <- prometheus.MustNewConstMetric(c.bufferBytes, prometheus.GaugeValue, float64(s.BufferedBytes))
	ch <- prometheus.MustNewConstMetric(c.highWater, prometheus.GaugeValue, float64(s.BufferHighWatermark))
	ch <- prometheus.MustNewConstMetric(c.retries, prometheus.CounterValue, float64(s.Retries))
	ch <- prometheus.MustNewConstMetric(c.reconnects, prometheus.CounterValue, float64(s.Reconnects))
	cs := c.src.ConsumerStats()
	for _, o := range []struct {
		name string
		v    uint64
	}{
		{"handled", cs.Handled}, {"skipped", cs.Skipped}, {"duplicate", cs.Duplicates},
		{"malformed", cs.Malformed}, {"dead_lettered", cs.DeadLettered}, {"retried", cs.Retried},
		{"trimmed", cs.Trimmed}, {"epoch", cs.Epochs}, {"epoch_ignored", cs.EpochsIgnored},
	} {
		ch <- prometheus.MustNewConstMetric(c.commands, prometheus.CounterValue, float64(o.v), o.name)
	}
}
