//go:build !race

package functions_test

const raceDetector = false
