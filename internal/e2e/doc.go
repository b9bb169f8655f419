// Package e2e holds the end-to-end tests: the real handler binary, built
// from the module root and started as the Azure Functions host starts it,
// on the embedded hub, the upstream durabletask-go sidecar and the strict
// Durable Task Scheduler conformance server (internal/dtstest). Its files
// are one per feature; harness_test.go starts and drives the handler.
package e2e
