// Command kard-bridge-peer is the benchmark peer of kard-bridge: the Benthos stream engine (the engine of
// Redpanda Connect, github.com/redpanda-data/benthos/v4, MIT) with only the "pure" and "io" component sets
// (bloblang mapping, archive, batching, http_client output) plus the kafka_franz input in kafka_franz.go
// (franz-go, a consumer group, commits of acknowledged offsets). Built by bench/peer/build_connect.py into
// a cache directory outside the repository; configured by bench/peer/connect.yaml.
package main

import (
	"context"

	_ "github.com/redpanda-data/benthos/v4/public/components/io"
	_ "github.com/redpanda-data/benthos/v4/public/components/pure"
	"github.com/redpanda-data/benthos/v4/public/service"
)

func main() {
	service.RunCLI(context.Background())
}
