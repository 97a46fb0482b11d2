// What the `ollama` CLI does on the wire (ollama/api/client.go), on Go's own net/http client: the HEAD /
// heartbeat before each command, unary calls, and streams read with a line scanner. Standard library only.
//
// Usage: client BASE_URL. It prints one JSON object per call: what came back, for a test to compare through a
// proxy and directly. A call that fails prints its error instead, and the client exits 1.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

const maxBufferSize = 8 * 1024 * 1024 // the CLI's per-line limit

type result struct {
	Call          string   `json:"call"`
	Status        int      `json:"status"`
	ContentType   string   `json:"content_type"`
	ContentLength int64    `json:"content_length"`
	Body          string   `json:"body,omitempty"`
	Lines         []string `json:"lines,omitempty"`
	Error         string   `json:"error,omitempty"`
}

var client = &http.Client{} // http.DefaultClient's settings: no timeout, keep-alive

func request(method, url string, body string, accept string) (*http.Response, error) {
	var reader io.Reader
	if body != "" {
		reader = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, reader)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", accept)
	req.Header.Set("User-Agent", "ollama/0.33.0 (amd64 linux) Go/go1.19")
	return client.Do(req)
}

// unary is Client.do: the whole body, an error for a status of 400 or more.
func unary(call, method, url, body string) result {
	resp, err := request(method, url, body, "application/json")
	if err != nil {
		return result{Call: call, Error: err.Error()}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	out := result{Call: call, Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"),
		ContentLength: resp.ContentLength, Body: string(data)}
	if err != nil {
		out.Error = err.Error()
	} else if resp.StatusCode >= 400 {
		out.Error = fmt.Sprintf("status %d", resp.StatusCode)
	}
	return out
}

// stream is Client.stream: one JSON object per line, an error line ends it.
func stream(call, url, body string) result {
	resp, err := request(http.MethodPost, url, body, "application/x-ndjson")
	if err != nil {
		return result{Call: call, Error: err.Error()}
	}
	defer resp.Body.Close()
	out := result{Call: call, Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"),
		ContentLength: resp.ContentLength}
	scanner := bufio.NewScanner(resp.Body)
	scanner.Buffer(make([]byte, 0, maxBufferSize), maxBufferSize)
	for scanner.Scan() {
		line := scanner.Bytes()
		var errorLine struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal(line, &errorLine); err != nil {
			out.Error = fmt.Sprintf("unmarshal: %v", err)
			return out
		}
		if errorLine.Error != "" {
			out.Error = errorLine.Error
			return out
		}
		out.Lines = append(out.Lines, string(line)) // string() copies: the scanner reuses its buffer
	}
	if err := scanner.Err(); err != nil {
		out.Error = err.Error()
	}
	return out
}

// heartbeat is Client.Heartbeat: HEAD / and nothing else; any status but 200 is an error.
func heartbeat(base string) result {
	resp, err := request(http.MethodHead, base+"/", "", "application/json")
	if err != nil {
		return result{Call: "heartbeat", Error: err.Error()}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	out := result{Call: "heartbeat", Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"),
		ContentLength: resp.ContentLength, Body: string(data)}
	if resp.StatusCode != http.StatusOK {
		out.Error = fmt.Sprintf("status %d", resp.StatusCode)
	}
	return out
}

func main() {
	base := strings.TrimRight(os.Args[1], "/")
	results := []result{
		heartbeat(base), // ollama show
		unary("show", http.MethodPost, base+"/api/show", `{"model":"llama3.2"}`),
		heartbeat(base), // ollama run: a streamed chat
		stream("chat", base+"/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`),
		unary("chat_whole", http.MethodPost, base+"/api/chat",
			`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}`),
		heartbeat(base), // ollama list
		unary("tags", http.MethodGet, base+"/api/tags", ""),
		heartbeat(base), // ollama ps
		unary("ps", http.MethodGet, base+"/api/ps", ""),
		heartbeat(base), // ollama pull
		stream("pull", base+"/api/pull", `{"model":"llama3.2"}`),
		unary("root", http.MethodGet, base+"/", ""),
		unary("big", http.MethodGet, base+"/api/big", ""),
		unary("sse", http.MethodPost, base+"/v1/chat/completions",
			`{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"hi"}]}`),
		unary("not_found", http.MethodGet, base+"/api/nothing", ""),
	}
	failed := false
	encoder := json.NewEncoder(os.Stdout)
	for _, r := range results {
		encoder.Encode(r)
		failed = failed || (r.Error != "" && r.Call != "not_found")
	}
	if failed {
		os.Exit(1)
	}
}
