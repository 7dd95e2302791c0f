// A minimal kafka_franz input for the benchmark peer. Redpanda Connect's own kafka_franz input (in
// github.com/redpanda-data/connect/v4) cannot be used here (see bench/README.md), so this is a small
// equivalent with the same field names and the same delivery model: a franz-go group consumer; message
// batches cut from one fetched partition, of at most max_yield_batch_bytes of values each; at most
// checkpoint_limit unacknowledged records per partition; offsets marked for commit only up to the highest
// contiguous acknowledged offset of each partition, committed every commit_period (and on revoke and on
// close). Nacked batches are retried (auto-replay).
package main

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/redpanda-data/benthos/v4/public/service"
	"github.com/twmb/franz-go/pkg/kgo"
)

func franzSpec() *service.ConfigSpec {
	return service.NewConfigSpec().
		Summary("Consumes Kafka topics with franz-go as a consumer group (benchmark subset of kafka_franz).").
		Fields(
			service.NewStringListField("seed_brokers"),
			service.NewStringListField("topics"),
			service.NewStringField("consumer_group"),
			service.NewIntField("checkpoint_limit").Default(1024),
			service.NewDurationField("commit_period").Default("5s"),
			service.NewBoolField("start_from_oldest").Default(true),
			service.NewIntField("fetch_max_partition_bytes").Default(1024*1024),
			service.NewIntField("max_yield_batch_bytes").Default(32*1024),
		)
}

func init() {
	err := service.RegisterBatchInput("kafka_franz", franzSpec(),
		func(conf *service.ParsedConfig, mgr *service.Resources) (service.BatchInput, error) {
			in, err := newFranzInput(conf, mgr)
			if err != nil {
				return nil, err
			}
			return service.AutoRetryNacksBatched(in), nil
		})
	if err != nil {
		panic(err)
	}
}

type pendingBatch struct {
	last *kgo.Record
	done bool
}

type partitionTracker struct {
	queue    []*pendingBatch
	inFlight int
}

type franzInput struct {
	brokers, topics []string
	group           string
	limit           int
	commitPeriod    time.Duration
	oldest          bool
	partBytes       int32
	yieldBytes      int
	log             *service.Logger

	client  *kgo.Client
	backlog []kgo.FetchTopicPartition

	mu       sync.Mutex
	trackers map[string]map[int32]*partitionTracker
	changed  chan struct{} // closed and replaced whenever an ack frees room
}

func newFranzInput(conf *service.ParsedConfig, mgr *service.Resources) (*franzInput, error) {
	in := &franzInput{log: mgr.Logger(), trackers: map[string]map[int32]*partitionTracker{}, changed: make(chan struct{})}
	var err error
	if in.brokers, err = splitList(conf, "seed_brokers"); err != nil {
		return nil, err
	}
	if in.topics, err = splitList(conf, "topics"); err != nil {
		return nil, err
	}
	if in.group, err = conf.FieldString("consumer_group"); err != nil {
		return nil, err
	}
	if in.limit, err = conf.FieldInt("checkpoint_limit"); err != nil {
		return nil, err
	}
	if in.commitPeriod, err = conf.FieldDuration("commit_period"); err != nil {
		return nil, err
	}
	if in.oldest, err = conf.FieldBool("start_from_oldest"); err != nil {
		return nil, err
	}
	partBytes, err := conf.FieldInt("fetch_max_partition_bytes")
	if err != nil {
		return nil, err
	}
	in.partBytes = int32(partBytes)
	if in.yieldBytes, err = conf.FieldInt("max_yield_batch_bytes"); err != nil {
		return nil, err
	}
	return in, nil
}

// splitList reads a string list whose entries may hold comma-separated values (as kafka_franz allows).
func splitList(conf *service.ParsedConfig, name string) ([]string, error) {
	entries, err := conf.FieldStringList(name)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, entry := range entries {
		for _, part := range strings.Split(entry, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out, nil
}

func (in *franzInput) Connect(ctx context.Context) error {
	if in.client != nil {
		return nil
	}
	reset := kgo.NewOffset().AtEnd()
	if in.oldest {
		reset = kgo.NewOffset().AtStart()
	}
	client, err := kgo.NewClient(
		kgo.SeedBrokers(in.brokers...),
		kgo.ConsumeTopics(in.topics...),
		kgo.ConsumerGroup(in.group),
		kgo.ConsumeResetOffset(reset),
		kgo.FetchMaxPartitionBytes(in.partBytes),
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(in.commitPeriod),
		kgo.OnPartitionsRevoked(in.revoked),
		kgo.OnPartitionsLost(in.lost),
		kgo.ClientID("kard-bridge-peer"),
	)
	if err != nil {
		return err
	}
	in.client = client
	return nil
}

// revoked commits what was acknowledged and forgets the partitions' trackers (their unacked records will be
// consumed again by the new owner, as in kafka_franz).
func (in *franzInput) revoked(ctx context.Context, cl *kgo.Client, parts map[string][]int32) {
	if err := cl.CommitMarkedOffsets(ctx); err != nil {
		in.log.Warnf("commit on revoke: %v", err)
	}
	in.lost(ctx, cl, parts)
}

func (in *franzInput) lost(_ context.Context, _ *kgo.Client, parts map[string][]int32) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for topic, ps := range parts {
		for _, p := range ps {
			delete(in.trackers[topic], p)
		}
	}
	in.wakeLocked()
}

func (in *franzInput) wakeLocked() {
	close(in.changed)
	in.changed = make(chan struct{})
}

func (in *franzInput) tracker(topic string, partition int32) *partitionTracker {
	byPart := in.trackers[topic]
	if byPart == nil {
		byPart = map[int32]*partitionTracker{}
		in.trackers[topic] = byPart
	}
	t := byPart[partition]
	if t == nil {
		t = &partitionTracker{}
		byPart[partition] = t
	}
	return t
}

// chunks cuts one partition's fetched records into batches of at most max_yield_batch_bytes of values (at
// least one record each), as kafka_franz does.
func (in *franzInput) chunks(p kgo.FetchTopicPartition) []kgo.FetchTopicPartition {
	var out []kgo.FetchTopicPartition
	start, size := 0, 0
	for i, r := range p.Records {
		if i > start && size+len(r.Value) > in.yieldBytes {
			out = append(out, kgo.FetchTopicPartition{Topic: p.Topic, FetchPartition: kgo.FetchPartition{Partition: p.Partition, Records: p.Records[start:i]}})
			start, size = i, 0
		}
		size += len(r.Value)
	}
	if start < len(p.Records) {
		out = append(out, kgo.FetchTopicPartition{Topic: p.Topic, FetchPartition: kgo.FetchPartition{Partition: p.Partition, Records: p.Records[start:]}})
	}
	return out
}

func (in *franzInput) ReadBatch(ctx context.Context) (service.MessageBatch, service.AckFunc, error) {
	for len(in.backlog) == 0 {
		fetches := in.client.PollFetches(ctx)
		if fetches.IsClientClosed() {
			return nil, nil, service.ErrNotConnected
		}
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			in.log.Errorf("fetch %s/%d: %v", topic, partition, err)
		})
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			in.backlog = append(in.backlog, in.chunks(p)...)
		})
	}
	p := in.backlog[0]
	in.backlog = in.backlog[1:]
	records := p.Records
	n := len(records)

	// Checkpoint limit: wait until this partition has room for the batch (or nothing in flight).
	in.mu.Lock()
	t := in.tracker(p.Topic, p.Partition)
	for t.inFlight > 0 && t.inFlight+n > in.limit {
		wait := in.changed
		in.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			in.backlog = append([]kgo.FetchTopicPartition{p}, in.backlog...)
			return nil, nil, ctx.Err()
		}
		in.mu.Lock()
		t = in.tracker(p.Topic, p.Partition)
	}
	entry := &pendingBatch{last: records[n-1]}
	t.queue = append(t.queue, entry)
	t.inFlight += n
	in.mu.Unlock()

	batch := make(service.MessageBatch, n)
	for i, r := range records {
		msg := service.NewMessage(r.Value)
		msg.MetaSetMut("kafka_key", string(r.Key))
		msg.MetaSetMut("kafka_topic", r.Topic)
		msg.MetaSetMut("kafka_partition", int(r.Partition))
		msg.MetaSetMut("kafka_offset", int(r.Offset))
		msg.MetaSetMut("kafka_timestamp_ms", r.Timestamp.UnixMilli())
		batch[i] = msg
	}
	ack := func(_ context.Context, err error) error {
		if err != nil {
			return nil // AutoRetryNacksBatched replays nacked batches; this ack is not called for them
		}
		in.mu.Lock()
		defer in.mu.Unlock()
		entry.done = true
		t.inFlight -= n
		var mark *kgo.Record
		for len(t.queue) > 0 && t.queue[0].done {
			mark = t.queue[0].last
			t.queue = t.queue[1:]
		}
		if mark != nil {
			in.client.MarkCommitRecords(mark)
		}
		in.wakeLocked()
		return nil
	}
	return batch, ack, nil
}

func (in *franzInput) Close(ctx context.Context) error {
	if in.client == nil {
		return nil
	}
	if err := in.client.CommitMarkedOffsets(ctx); err != nil {
		in.log.Warnf("final commit: %v", err)
	}
	in.client.Close()
	in.client = nil
	return nil
}
