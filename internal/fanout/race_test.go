//go:build race

package fanout_test

// raceDetector: the race detector slows the embedded hub's SQLite engine
// (pure Go, every access instrumented) some twentyfold, so the largest
// fan-out runs in make test's pass without it.
const raceDetector = true
