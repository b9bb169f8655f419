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
// few events came with the step before. The past events of the step before
// come again first, byte for byte, in the same region of the message: when
// they do, they are taken as decoded then, without being read one by one.
// Each event after them whose encoding is byte for byte the one kept at the
// same place is taken as decoded then too, and only the others are decoded.
// So whatever happened in between — another worker took a step, the
// instance was started again — the orchestrator replays exactly the history
// the work item carries. Decoded events are shared between steps, so nothing
// may change them; the executor only reads them.
type historyCache struct {
	maxBytes int

	mu      sync.Mutex
	bytes   int // encoded bytes held
	entries map[api.InstanceID]*cachedHistory
	hits    uint64 // events taken from the cache, for tests
	decoded uint64 // events decoded
	read    uint64 // events read one by one (taken from the cache or not)
}

// cachedHistory is one orchestration's history at its latest step: its
// past events' region, if they came in one, which holds its first
// regionEvents events, and the encodings of the events after them. It is
// never changed once made; a new step replaces it.
type cachedHistory struct {
	region       []byte
	regionEvents int
	tail         [][]byte
	events       []*backend.HistoryEvent
	bytes        int
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

	// The events read one by one: all but the leading ones that a region
	// like the last step's holds.
	reused := 0
	var pastEncoded [][]byte
	switch {
	case h.pastRegion != nil && last != nil && last.region != nil && bytes.HasPrefix(h.pastRegion, last.region):
		reused = last.regionEvents
		pastEncoded, err = splitRegion(h.pastRegion[len(last.region):])
	case h.pastRegion != nil:
		pastEncoded, err = splitRegion(h.pastRegion)
	default:
		pastEncoded = h.past
	}
	if err != nil {
		return nil, nil, fmt.Errorf("decoding the history of instance %s: %w", id, err)
	}
	pastCount := reused + len(pastEncoded)
	n := pastCount + len(h.new)
	next := &cachedHistory{region: h.pastRegion, events: make([]*backend.HistoryEvent, 0, n)}
	if next.region != nil {
		next.regionEvents = pastCount
		next.tail = h.new
	} else {
		next.tail = append(append(make([][]byte, 0, n), pastEncoded...), h.new...)
	}
	next.bytes = len(next.region)
	for _, b := range next.tail {
		next.bytes += len(b)
	}
	next.events = append(next.events, last.leading(reused)...)
	hits := reused
	for i, b := range pastEncoded {
		e, hit, err := last.event(reused+i, b)
		if err != nil {
			return nil, nil, fmt.Errorf("decoding history event %d of instance %s: %w", reused+i, id, err)
		}
		next.events = append(next.events, e)
		hits += hit
	}
	for i, b := range h.new {
		e, hit, err := last.event(pastCount+i, b)
		if err != nil {
			return nil, nil, fmt.Errorf("decoding history event %d of instance %s: %w", pastCount+i, id, err)
		}
		next.events = append(next.events, e)
		hits += hit
	}

	c.mu.Lock()
	c.hits += uint64(hits)
	c.decoded += uint64(n - hits)
	c.read += uint64(len(pastEncoded) + len(h.new))
	c.put(id, next)
	c.mu.Unlock()
	// Capped, so that appending to past cannot overwrite new.
	return next.events[:pastCount:pastCount], next.events[pastCount:], nil
}

// leading returns h's first n events; none if h is nil.
func (h *cachedHistory) leading(n int) []*backend.HistoryEvent {
	if h == nil {
		return nil
	}
	return h.events[:n]
}

// event returns event i of a history, encoded as b: h's own if h has it
// encoded so (hit is 1), else b decoded.
func (h *cachedHistory) event(i int, b []byte) (e *backend.HistoryEvent, hit int, err error) {
	if h != nil && i >= h.regionEvents && i-h.regionEvents < len(h.tail) && bytes.Equal(h.tail[i-h.regionEvents], b) {
		return h.events[i], 1, nil
	}
	e = &backend.HistoryEvent{}
	return e, 0, proto.Unmarshal(b, e)
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
