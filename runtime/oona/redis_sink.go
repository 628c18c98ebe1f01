package oona

import (
	"context"
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

// redisSink XADDs batches through one pipeline per batch.
type redisSink struct {
	client *redis.Client
	maxLen int64
}

func (s *redisSink) write(ctx context.Context, batch []entry) []error {
	pipe := s.client.Pipeline()
	cmds := make([]*redis.StringCmd, len(batch))
	total := 0
	for i := range batch {
		total += 6 + len(batch[i].fields)
	}
	all := make([]any, 0, total) // one allocation for the batch's arguments
	for i := range batch {
		e := &batch[i]
		args := all[len(all):len(all):cap(all)]
		args = append(args, "xadd", e.stream)
		if s.maxLen > 0 && !strings.HasPrefix(e.stream, "control.") {
			args = append(args, "maxlen", "~", s.maxLen)
		}
		args = append(args, "*")
		for _, f := range e.fields {
			args = append(args, f)
		}
		all = all[:len(all)+len(args)]
		args = args[:len(args):len(args)] // the next command's arguments follow
		cmd := redis.NewStringCmd(ctx, args...)
		_ = pipe.Process(ctx, cmd)
		cmds[i] = cmd
	}
	_, execErr := pipe.Exec(ctx)
	errs := make([]error, len(batch))
	for i, c := range cmds {
		err := c.Err()
		if err == nil && c.Val() == "" {
			// go-redis leaves the commands untouched when the connection
			// fails to initialise (a WRONGPASS during HELLO): no entry ID
			// means not delivered.
			err = execErr
			if err == nil {
				err = errors.New("oona: XADD returned no entry ID")
			}
		}
		errs[i] = err
	}
	return errs
}

// permanent: a reply error from the server that retrying cannot fix
// (WRONGTYPE, a syntax error). Transport errors and the server's transient
// states (LOADING, BUSY, OOM, READONLY, auth not yet configured) are retried.
func (s *redisSink) permanent(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	if redis.HasErrorPrefix(err, "LOADING") || redis.HasErrorPrefix(err, "BUSY") ||
		redis.HasErrorPrefix(err, "OOM") || redis.HasErrorPrefix(err, "READONLY") ||
		redis.HasErrorPrefix(err, "MASTERDOWN") || redis.HasErrorPrefix(err, "TRYAGAIN") ||
		redis.HasErrorPrefix(err, "CLUSTERDOWN") || redis.HasErrorPrefix(err, "NOAUTH") ||
		redis.HasErrorPrefix(err, "WRONGPASS") || redis.HasErrorPrefix(err, "NOPERM") ||
		redis.HasErrorPrefix(err, "NOREPLICAS") {
		return false
	}
	// A reply error carrying a transport failure is not the server's word.
	return strings.HasPrefix(re.Error(), "ERR") || strings.HasPrefix(re.Error(), "WRONGTYPE")
}

func (s *redisSink) probe(ctx context.Context) error {
	return s.client.Ping(ctx).Err()
}

func (s *redisSink) close() error { return s.client.Close() }
