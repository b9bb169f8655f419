package main

// The function app's HTTP API, used as a user would: start a fan-out, then
// poll its status URL until it has finished.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// started is the answer to a start request.
type started struct {
	ID        string `json:"id"`
	StatusURL string `json:"statusQueryGetUri"`
}

// status is the part of GET /api/status/<id> the benchmark reads.
type status struct {
	RuntimeStatus string          `json:"runtimeStatus"`
	Output        json.RawMessage `json:"output"`
}

// summary is the part of a completed orchestration's output it checks.
type summary struct {
	TotalItemsProcessed int  `json:"total_items_processed"`
	Success             bool `json:"success"`
}

// startFanOut posts {"count": n}, with a traceparent if not "", and returns
// the new instance and how long the request took, from sending it to having
// read the whole answer.
func startFanOut(ctx context.Context, client *http.Client, h *handler, n int, traceparent string) (started, time.Duration, error) {
	body := fmt.Appendf(nil, `{"count": %d}`, n)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.baseURL+"/api/fan_out_fan_in", bytes.NewReader(body))
	if err != nil {
		return started{}, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if traceparent != "" {
		req.Header.Set("traceparent", traceparent)
	}
	begin := time.Now()
	res, err := client.Do(req)
	if err != nil {
		return started{}, 0, fmt.Errorf("starting a fan-out of %d items: %w", n, err)
	}
	data, err := io.ReadAll(res.Body)
	res.Body.Close()
	took := time.Since(begin)
	if err != nil {
		return started{}, 0, fmt.Errorf("starting a fan-out of %d items: reading the answer: %w", n, err)
	}
	if res.StatusCode != http.StatusAccepted {
		return started{}, 0, fmt.Errorf("starting a fan-out of %d items: %s: %s", n, res.Status, data)
	}
	var s started
	if err := json.Unmarshal(data, &s); err != nil || s.ID == "" || s.StatusURL == "" {
		return started{}, 0, fmt.Errorf("starting a fan-out of %d items: unexpected answer %s", n, data)
	}
	return s, took, nil
}

// waitCompleted polls the instance's status URL every interval until it is
// Completed, and checks that its summary counts all n items. It fails at
// once if the orchestration fails or the handler exits, and after timeout.
func waitCompleted(ctx context.Context, client *http.Client, h *handler, s started, n int, interval, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := h.Running(); err != nil {
			return err
		}
		st, err := getStatus(ctx, client, s.StatusURL)
		if err != nil {
			return fmt.Errorf("instance %s: %w", s.ID, err)
		}
		switch st.RuntimeStatus {
		case "Completed":
			return checkSummary(s.ID, st.Output, n)
		case "Failed", "Terminated", "Canceled":
			return fmt.Errorf("instance %s (%d items) is %s: %s", s.ID, n, st.RuntimeStatus, st.Output)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("instance %s (%d items) still %s after %s", s.ID, n, st.RuntimeStatus, timeout)
		}
		if err := sleep(ctx, interval); err != nil {
			return err
		}
	}
}

// getStatus fetches an instance's status. A 503 (the scheduler briefly not
// answering) reads as still running; any other unexpected answer is an error.
func getStatus(ctx context.Context, client *http.Client, url string) (status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return status{}, err
	}
	res, err := client.Do(req)
	if err != nil {
		return status{}, err
	}
	data, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return status{}, fmt.Errorf("reading its status: %w", err)
	}
	switch res.StatusCode {
	case http.StatusOK, http.StatusAccepted:
	case http.StatusServiceUnavailable:
		return status{RuntimeStatus: "unavailable (503)"}, nil
	default:
		return status{}, fmt.Errorf("status: %s: %s", res.Status, data)
	}
	var st status
	if err := json.Unmarshal(data, &st); err != nil {
		return status{}, fmt.Errorf("status is not JSON: %w: %.200s", err, data)
	}
	return st, nil
}

// checkSummary checks a completed orchestration's output covers n items.
func checkSummary(id string, output []byte, n int) error {
	var sum summary
	if err := json.Unmarshal(output, &sum); err != nil {
		return fmt.Errorf("instance %s completed with an output that is not a summary: %w: %.200s", id, err, output)
	}
	if sum.TotalItemsProcessed != n || !sum.Success {
		return fmt.Errorf("instance %s completed with total_items_processed %d and success %t, want %d and true",
			id, sum.TotalItemsProcessed, sum.Success, n)
	}
	return nil
}

// newClient is an HTTP client that keeps a connection per concurrent caller
// alive, as a load-testing user would: the default keeps only two idle.
func newClient() *http.Client {
	return &http.Client{
		Timeout:   time.Minute,
		Transport: &http.Transport{MaxIdleConns: 200, MaxIdleConnsPerHost: 200, IdleConnTimeout: 30 * time.Second},
	}
}
