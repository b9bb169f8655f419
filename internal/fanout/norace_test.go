//go:build !race

package fanout_test

const raceDetector = false
