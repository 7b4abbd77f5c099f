// A Go service that pins 1 MiB buffers through 1-byte sub-slices, beside a path that churns
// through as many buffers and keeps none. Protocol as truth.h: "ready <pid>", wait for a line
// unless --now, wait a second, run for SECONDS (one step every 100 ms), collect garbage, print
// truth lines and "done", then wait for a line unless --exit.
//
// Truth lines:
//
//	truth main.keepPrefix <bytes>   the buffers kept alive through their prefixes
//	truth main.churn 0              it keeps nothing
//	truth main.hold <bytes>         with --hold-mib=N: N MiB allocated and touched before "ready"
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
	"strings"
	"time"
)

const bufferSize = 1 << 20

var prefixes [][]byte
var sink []byte
var held [][]byte

// hold allocates and touches mib MiB before the attach, as a service that has run a while
// has: that heap was mapped before any probe was there.
//
//go:noinline
func hold(mib int) {
	for i := 0; i < mib; i++ {
		buf := make([]byte, bufferSize)
		for at := 0; at < len(buf); at += 4096 {
			buf[at] = 1
		}
		held = append(held, buf)
	}
}

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
	now, exit, holdMiB := false, false, 0
	for _, arg := range os.Args[1:] {
		switch {
		case arg == "--now":
			now = true
		case arg == "--exit":
			exit = true
		case strings.HasPrefix(arg, "--hold-mib="):
			fmt.Sscanf(strings.TrimPrefix(arg, "--hold-mib="), "%d", &holdMiB)
		}
	}
	hold(holdMiB)
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
	fmt.Printf("truth main.hold %d\n", len(held)*bufferSize)
	fmt.Println("done")
	if !exit {
		stdin.ReadString('\n')
	}
	runtime.KeepAlive(prefixes)
	runtime.KeepAlive(held)
}
