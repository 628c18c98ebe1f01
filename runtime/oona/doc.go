// Package oona is the Kasmina host's client of the Oona message bus (Redis
// Streams), byte-compatible with the Python services' OonaClient, plus an
// embedded in-process bus used when no Redis is configured.
//
// # Selecting the bus
//
// Open(ctx, cfg, logger) returns a RedisBus when cfg.URL is set (from
// --oona URL, or REDIS_URL through ConfigFromEnv; the flag wins) and an
// EmbeddedBus otherwise. ParseURL fills what a URL leaves out as redis-py's
// from_url does (localhost, 6379, database 0); rediss:// enables TLS;
// redis://user:password@host/db authenticates as an ACL user; with no
// password in the URL, KASMINA_REDIS_PASSWORD_FILE (Config.PasswordFile)
// names a file holding it. A minimal ACL for a host:
//
//	ACL SETUSER kasmina on >secret resetkeys ~telemetry.* ~control.kasmina.commands* ~system.events.epoch
//	    resetchannels -@all +ping +hello +client|setname +xadd +xreadgroup +xread +xack +xgroup|create
//	    +xautoclaim +xpending +xrange +xrevrange +xinfo|groups
//
// # Wire format
//
// One stream per topic, named by the topic string. One entry per
// OonaMessage with one field per top-level field, in this order: event_id,
// sender_id, timestamp, trace_id, topic, payload. The payload is compact
// JSON as its contract writes it (a map with its keys sorted, a typed
// payload such as a HealthSignal in its fields' order; numbers as the
// Python models write them, 0.1 and 3.0); the other fields are their string
// form, the timestamp being the contract's JSON timestamp without quotes
// ("2026-03-01T12:30:45.123456Z"). The Python reader json.loads every field
// and keeps the raw string only when that fails, so Publish refuses
// (ErrAmbiguousField, naming the field) an event_id, sender_id or trace_id
// whose text parses as JSON ("42", "true", "null", "NaN", `"x"`, "[1]"),
// and ids that are not UTF-8. Reading (DecodeFields) is lenient where
// Python is not: string fields stay strings, a JSON-quoted string is
// unquoted, and the timestamp may use a space instead of 'T'
// (str(datetime)).
//
// # Publishing
//
// Every message is encoded once, on the caller's goroutine, by its
// contracts: the envelope by contracts.OonaMessage.AppendJSON (ids,
// topic and the timestamp as the Python models write them) and the payload
// by its own encoder. PublishPayload publishes a new message (a fresh
// event_id from a pool of crypto/rand ids, the current time) whose payload
// writes its own JSON and checks itself (a Payload:
// contracts.HealthSignal, through HealthSignal.AppendJSON and Validate);
// it is the runtime's one way to publish its health signals. Publish
// publishes a whole OonaMessage, its map payload encoded by the contract's
// encoder (keys sorted) and checked by OonaMessage.Validate. The Redis
// entry's timestamp and payload are cut out of that JSON; the embedded
// bus writes the JSON itself as its line.
//
// Publish and PublishPayload queue the entry in a bounded buffer (10 000
// messages and 16 MiB by default, a list of 512-entry blocks, so growing
// never copies under the lock) and never wait for the bus. One flusher
// goroutine takes batches of up to 256 entries; the Redis bus writes each
// as one go-redis pipeline of XADDs (XADD ... MAXLEN ~ 100000 on every
// stream but control.*) on its own client, built from the same options as
// the consumer's (ParseURL and Config.redisOptions: the URL's TLS, ACL
// user and password or KASMINA_REDIS_PASSWORD_FILE, database and
// timeouts), named with CLIENT SETNAME kasmina-pub-<host id>, speaking
// RESP2 and with go-redis's own retries off. The flusher builds the next
// batch's commands while an executor goroutine runs the last one, and the
// executor runs them back to back on one connection, so Redis does not
// wait for the flusher between batches; one batch is on the wire at a
// time, which keeps each stream in publish order. An entry is delivered
// when its reply (a stream ID) was read, even if the connection failed
// after it; entries Redis refuses for good (WRONGTYPE, ERR) are dropped
// with reason permanent_error, the others of the pipeline are unaffected.
// When a batch has an entry to send again (a lost connection, LOADING,
// OOM, a connection Redis refused to set up), the executor fails the
// batch behind it unsent, and the flusher backs off (100 ms doubling to
// 5 s, full jitter), probes with PING, and then resends in order
// everything not acknowledged, so a write whose reply was lost can land
// twice: consumers de-duplicate by event_id. Each probe dials at most once
// (after 16 failed dials in a row, go-redis's pool fails fast and redials
// on its own once a second until Redis answers), so the retries counter
// follows the backoff schedule. Beyond the bound the oldest buffered
// message is dropped and counted (reason overflow); Close counts what its
// deadline left behind (reason shutdown), closing the client so that a
// write blocked on a Redis that does not answer ends with it. Stats
// satisfy Published == Delivered + Dropped + Buffered.
// NewCollector/RegisterMetrics export
// kasmina_bus_messages_published_total{topic},
// kasmina_bus_messages_delivered_total{topic},
// kasmina_bus_messages_dropped_total{topic,reason},
// kasmina_bus_buffer_messages, kasmina_bus_buffer_bytes,
// kasmina_bus_buffer_high_watermark_messages, kasmina_bus_retries_total,
// kasmina_bus_reconnects_total and kasmina_bus_commands_total{outcome} on
// a registry the caller owns.
//
// # Commands
//
// ConsumeCommands reads control.kasmina.commands through the host's own
// consumer group ("kasmina-<host id>", consumer name = host id), created
// at "$" with MKSTREAM on first start so a new host does not replay
// history, and resumed from its position after a restart. It handles its
// own pending entries first, then reads new ones with XREADGROUP BLOCK.
// Each entry is decoded, de-duplicated by event_id (bounded LRU; an empty
// event_id is never taken for a duplicate), skipped and acknowledged when
// the handler does not serve its layer, else passed to
// CommandHandler.HandleCommand, with a deadline (CommandTimeout, 45 s by
// default), and acknowledged on success. Commands for the same seed
// (layer_name, seed_idx) run one at a time in the order read; commands for
// different seeds run concurrently (Lanes, 8 by default), so a slow load
// holds up only its own seed. A handler error whose failure class is
// permanent (not found, bad input, malformed, refused, conflict, too
// large, unsupported), and any malformed entry, is copied to
// control.kasmina.commands.dlq with dlq_reason, dlq_source_id and
// dlq_group fields, then acknowledged; any other error (unavailable,
// timeout, an unclassified one) leaves the entry pending, and a janitor
// (every 30 s) reclaims entries idle for 60 s with XAUTOCLAIM and
// dead-letters those delivered 5 times. Payloads (see
// COMMANDS.md):
//
//	load_kernel     {"command": "load_kernel", "layer_name": str, "seed_idx": int ≥ 0, "artifact_id": str}
//	unload_kernel   {"command": "unload_kernel", "layer_name": str, "seed_idx": int ≥ 0}
//	set_seed_state  {"command": "set_seed_state", "layer_name": str, "seed_idx": int ≥ 0, "state": SeedState}
//	set_alpha       {"command": "set_alpha", "layer_name": str, "seed_idx": int ≥ 0, "alpha": 0 ≤ float ≤ 1}
//
// ConsumeEpochs reads system.events.epoch (XREAD from "$", no group) and
// calls back with the payload's epoch; an entry without a valid epoch is
// logged as a warning and counted (ConsumerStats.EpochsIgnored, outcome
// epoch_ignored).
//
// # Embedded bus
//
// EmbeddedBus writes each published message as one JSON line (the
// contract's JSON of the OonaMessage) to a file or stdout, and delivers it
// to in-process subscribers, so the host's own command and epoch consumers
// work on one machine without Redis. It shares the buffered publisher, and
// the same publisher test suite runs against both buses. It has no
// dead-letter stream: dead letters are logged, counted and kept
// (DeadLetters).
package oona
