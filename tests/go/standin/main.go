// An Ollama stand-in on Go's own net/http, the stack Ollama serves with: whatever framing, flushing and HEAD
// handling net/http decides for Ollama, it decides here too. Standard library only.
//
// Usage: standin ADDRESS (port 0 picks one); it prints "listening on HOST:PORT" once it accepts connections.
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
)

// Replies in Ollama's shapes (shared/reference/ollama-api.md §8), compact as Go's encoder writes them.
var chatLines = []string{
	`{"model":"llama3.2","created_at":"2026-12-03T20:00:00.1Z","message":{"role":"assistant","content":"","thinking":"The user greets me."},"done":false}`,
	`{"model":"llama3.2","created_at":"2026-12-03T20:00:00.2Z","message":{"role":"assistant","content":"Hello"},"done":false}`,
	`{"model":"llama3.2","created_at":"2026-12-03T20:00:00.3Z","message":{"role":"assistant","content":" there \u003cfriend\u003e!"},"done":false}`,
	`{"model":"llama3.2","created_at":"2026-12-03T20:00:00.4Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":412000000,"load_duration":12000000,"prompt_eval_count":26,"prompt_eval_cached_count":20,"prompt_eval_duration":30000000,"eval_count":3,"eval_duration":300000000}`,
}

var pullLines = []string{
	`{"status":"pulling manifest"}`,
	`{"status":"pulling bc07c81de745","digest":"sha256:bc07c81de745696fdf5afca05e065818a8149fb0c77266fb584d9b2cba3711ab","total":2019377376}`,
	`{"status":"pulling bc07c81de745","digest":"sha256:bc07c81de745696fdf5afca05e065818a8149fb0c77266fb584d9b2cba3711ab","total":2019377376,"completed":2019377376}`,
	`{"status":"verifying sha256 digest"}`,
	`{"status":"writing manifest"}`,
	`{"status":"success"}`,
}

var sseEvents = []string{
	`{"id":"chatcmpl-217","object":"chat.completion.chunk","created":1760700847,"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}`,
	`{"id":"chatcmpl-217","object":"chat.completion.chunk","created":1760700847,"model":"llama3.2","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`,
}

const (
	tags    = `{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","modified_at":"2025-05-04T17:37:44.706015396-07:00","size":2019393189,"digest":"a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72","details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],"parameter_size":"3.2B","quantization_level":"Q4_K_M"},"capabilities":["completion","tools"]}]}`
	ps      = `{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","size":3400000000,"digest":"a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72","details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],"parameter_size":"3.2B","quantization_level":"Q4_K_M"},"expires_at":"2026-12-03T20:05:00Z","size_vram":3400000000,"context_length":4096}]}`
	show    = `{"license":"LLAMA 3.2 COMMUNITY LICENSE","modelfile":"FROM llama3.2","parameters":"stop \"\u003c|eot_id|\u003e\"","template":"{{ .Prompt }}","details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],"parameter_size":"3.2B","quantization_level":"Q4_K_M"},"model_info":{"general.architecture":"llama","llama.context_length":131072},"capabilities":["completion","tools"],"modified_at":"2025-05-04T17:37:44.706015396-07:00"}`
	version = `{"version":"0.33.0"}`
)

// streams reports whether a native request asked for a stream: absent means yes, as in Ollama.
func streams(r *http.Request) bool {
	var body struct {
		Stream *bool `json:"stream"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		return true
	}
	return body.Stream == nil || *body.Stream
}

func ndjson(w http.ResponseWriter, lines []string) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	for _, line := range lines {
		fmt.Fprintf(w, "%s\n", line)
		w.(http.Flusher).Flush() // gin's c.Stream flushes after every line
	}
}

func whole(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprint(w, body)
}

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, "404 page not found")
			return
		}
		// HEAD / is the CLI's heartbeat: net/http keeps the length of what GET would send and drops the body.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "Ollama is running")
	})
	mux.HandleFunc("/api/version", func(w http.ResponseWriter, r *http.Request) { whole(w, 200, version) })
	mux.HandleFunc("/api/tags", func(w http.ResponseWriter, r *http.Request) { whole(w, 200, tags) })
	mux.HandleFunc("/api/ps", func(w http.ResponseWriter, r *http.Request) { whole(w, 200, ps) })
	mux.HandleFunc("/api/show", func(w http.ResponseWriter, r *http.Request) { whole(w, 200, show) })
	mux.HandleFunc("/api/chat", func(w http.ResponseWriter, r *http.Request) {
		if !streams(r) {
			whole(w, 200, chatLines[len(chatLines)-1])
			return
		}
		ndjson(w, chatLines)
	})
	mux.HandleFunc("/api/pull", func(w http.ResponseWriter, r *http.Request) { ndjson(w, pullLines) })
	mux.HandleFunc("/v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		for _, event := range sseEvents {
			fmt.Fprintf(w, "data: %s\n\n", event)
			w.(http.Flusher).Flush()
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
	mux.HandleFunc("/api/big", func(w http.ResponseWriter, r *http.Request) {
		// Over net/http's 2 KiB buffer and never flushed: Go frames it chunked, as Ollama's larger JSON replies.
		whole(w, 200, `{"models":["`+strings.Repeat("m", 5000)+`"]}`)
	})

	listener, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", listener.Addr())
	if err := http.Serve(listener, mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
