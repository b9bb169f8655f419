package scheduler

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"google.golang.org/protobuf/proto"
)

// historyCacheBytes bounds the encoded history the cache keeps, in all; the
// decoded events take about twice as much again, and the collector's target
// (GOGC=400) five times what is kept. A partition of 1,000 items ends with
// some 300 kB of history, so this holds a dozen partitions at their largest,
// and a hundred of 100 items.
const historyCacheBytes = 4 << 20

// historyCache keeps, for each orchestration this worker ran a step of
// lately, its history as decoded and as encoded. Every orchestrator work
// item carries the orchestration's whole history, and all of it but the last
// few events came with the step before: an event whose encoding is byte for
// byte the one kept at the same place is taken as decoded then, and only the
// others are decoded. So whatever happened in between — another worker took
// a step, the instance was started again — the orchestrator replays exactly
// the history the work item carries. Decoded events are shared between
// steps, so nothing may change them; the executor only reads them.
type historyCache struct {
	maxBytes int

	mu      sync.Mutex
	bytes   int // encoded bytes held
	entries map[api.InstanceID]*cachedHistory
	hits    uint64 // events taken from the cache, for tests
	decoded uint64 // events decoded
}

// cachedHistory is one orchestration's history at its latest step. It is
// never changed once made; a new step replaces it.
type cachedHistory struct {
	encoded [][]byte
	events  []*backend.HistoryEvent
	bytes   int
}

func newHistoryCache(maxBytes int) *historyCache {
	return &historyCache{maxBytes: maxBytes, entries: make(map[api.InstanceID]*cachedHistory)}
}

// decode returns the events of h, taking those already decoded for instance
// id where their encoding is the same, and keeps them for its next step.
func (c *historyCache) decode(id api.InstanceID, h encodedHistory) (past, new []*backend.HistoryEvent, err error) {
	c.mu.Lock()
	last := c.entries[id]
	c.mu.Unlock()

	n := len(h.past) + len(h.new)
	next := &cachedHistory{encoded: make([][]byte, 0, n), events: make([]*backend.HistoryEvent, 0, n)}
	next.encoded = append(append(next.encoded, h.past...), h.new...)
	hits := 0
	for i, b := range next.encoded {
		next.bytes += len(b)
		if last != nil && i < len(last.encoded) && bytes.Equal(last.encoded[i], b) {
			next.events = append(next.events, last.events[i])
			hits++
			continue
		}
		e := &backend.HistoryEvent{}
		if err := proto.Unmarshal(b, e); err != nil {
			return nil, nil, fmt.Errorf("decoding history event %d of instance %s: %w", i, id, err)
		}
		next.events = append(next.events, e)
	}

	c.mu.Lock()
	c.hits += uint64(hits)
	c.decoded += uint64(n - hits)
	c.put(id, next)
	c.mu.Unlock()
	// Capped, so that appending to past cannot overwrite new.
	return next.events[:len(h.past):len(h.past)], next.events[len(h.past):], nil
}

// put keeps h as id's history, dropping others, taken at random, while over
// the bound. At random, not the least recently used: when more
// orchestrations take turns than fit, dropping the least recently used would
// drop each one just before its next step. c.mu is held.
func (c *historyCache) put(id api.InstanceID, h *cachedHistory) {
	c.drop(id)
	if h.bytes > c.maxBytes {
		return
	}
	for c.bytes+h.bytes > c.maxBytes {
		for other := range c.entries { // map order: as good as random
			c.drop(other)
			break
		}
	}
	c.entries[id] = h
	c.bytes += h.bytes
}

// forget drops id's history: the orchestration has finished, or started
// anew, so its next step, if any, shares nothing with this one.
func (c *historyCache) forget(id api.InstanceID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop(id)
}

func (c *historyCache) drop(id api.InstanceID) {
	if e, ok := c.entries[id]; ok {
		c.bytes -= e.bytes
		delete(c.entries, id)
	}
}
