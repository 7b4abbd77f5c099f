// A Go service that pins 1 MiB buffers through 1-byte sub-slices, beside a path that churns
// through as many buffers and keeps none. Protocol as truth.h: "ready <pid>", wait for a line
// unless --now, wait a second, run for SECONDS (one step every 100 ms), collect garbage, print
// truth lines and "done", then wait for a line unless --exit.
//
// Truth lines:
//
//	truth main.keepPrefix <bytes>   the buffers kept alive through their prefixes
//	truth main.churn 0              it keeps nothing
//
// Like most services (net/http/pprof, a debug dump), it can write a heap profile on request
// (HEAP_PROFILE=path, not set in the tests): that keeps runtime.MemProfile linked, and without
// it the linker turns the runtime's heap profile off.
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"time"
)

const bufferSize = 1 << 20

var prefixes [][]byte
var sink []byte

// keepPrefix reads a message into a fresh buffer and keeps only its first byte, which keeps
// the whole buffer alive.
//
//go:noinline
func keepPrefix(n int) {
	buf := make([]byte, bufferSize)
	buf[0] = byte(n)
	prefixes = append(prefixes, buf[:1])
}

// churn does the same work and keeps nothing.
//
//go:noinline
func churn(n int) {
	buf := make([]byte, bufferSize)
	buf[0] = byte(n)
	sink = buf[:1]
	sink = nil
}

func main() {
	now, exit := false, false
	for _, arg := range os.Args[1:] {
		switch arg {
		case "--now":
			now = true
		case "--exit":
			exit = true
		}
	}
	seconds := 4.0
	if len(os.Args) > 1 {
		fmt.Sscanf(os.Args[len(os.Args)-1], "%g", &seconds)
	}
	stdin := bufio.NewReader(os.Stdin)
	fmt.Printf("ready %d\n", os.Getpid())
	if !now {
		if _, err := stdin.ReadString('\n'); err != nil {
			return
		}
	}
	time.Sleep(time.Second)
	end := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	for n := 0; time.Now().Before(end); n++ {
		keepPrefix(n)
		keepPrefix(n)
		for i := 0; i < 4; i++ {
			churn(n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A collection publishes the profile up to now, as the runtime does after every cycle.
	runtime.GC()
	if path := os.Getenv("HEAP_PROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	fmt.Printf("truth main.keepPrefix %d\n", len(prefixes)*bufferSize)
	fmt.Printf("truth main.churn 0\n")
	fmt.Println("done")
	if !exit {
		stdin.ReadString('\n')
	}
	runtime.KeepAlive(prefixes)
}
