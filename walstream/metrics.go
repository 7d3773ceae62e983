package walstream

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MetricsPrefix starts the name of every metric of a running stream.
const MetricsPrefix = "walkeeper_stream_"

// Metrics exposes a running stream to Prometheus. Create it with
// NewMetrics, pass it as Options.Metrics and serve it with ServeMetrics.
//
// Nothing is updated for Prometheus while streaming: the receiver and the
// uploader keep their positions and counters in atomics they need anyway,
// and a scrape reads them. A scrape therefore costs the stream nothing but a
// few atomic loads.
//
// LSNs are exported as the byte position (float64): exact up to 2^53 bytes
// (8 PiB of WAL), far beyond any real server's lifetime.
type Metrics struct {
	reg  *prometheus.Registry
	slot string
	s    atomic.Pointer[streamer]
}

// Metric descriptions; docs/metrics.md explains each.
var (
	descUp = metricDesc("up",
		"1 while a replication connection is streaming, 0 while (re)connecting.")
	descInfo = metricDesc("info",
		"Always 1; labels name the slot, the timeline being streamed and the server's system identifier.",
		"slot", "timeline", "system_identifier")
	descTimeline = metricDesc("timeline",
		"Timeline being streamed (0 before the first connection).")
	descReceived = metricDesc("received_lsn_bytes",
		"WAL position received from the server (in memory, not yet necessarily stored), as a byte position.")
	descFlushed = metricDesc("flushed_lsn_bytes",
		"WAL position durable in the repository (complete segments and the newest .partial); the flush position reported to the server, which the slot follows.")
	descStored = metricDesc("stored_lsn_bytes",
		"End of the newest complete WAL segment in the repository: what recovery can replay without a .partial.")
	descServerEnd = metricDesc("server_wal_end_lsn_bytes",
		"The server's WAL end as last reported in its XLogData or keepalive messages.")
	descLagBytes = metricDesc("lag_bytes",
		"Server WAL end minus the flushed position: WAL the primary holds for this slot that is not yet in the repository.")
	descLagSeconds = metricDesc("lag_seconds",
		"Age of the oldest received WAL not yet durable in the repository (0 when all received WAL is stored).")
	descPartialAge = metricDesc("partial_age_seconds",
		"Seconds since the stream last stored WAL (a .partial or a complete segment); grows on an idle server too, read it with lag_bytes.")
	descSegments = metricDesc("segments_stored_total",
		"Complete WAL segments stored (or found already stored with the same content).")
	descPartials = metricDesc("partials_stored_total",
		"Snapshots of the unfinished segment stored as .partial.")
	descStoredBytes = metricDesc("stored_bytes_total",
		"Bytes written to the repository after compression (segments, partials, history files).")
	descUploadErrors = metricDesc("upload_errors_total",
		"Failed attempts to store a WAL object (each retry that fails counts again).")
	descUploadRetries = metricDesc("upload_retries_total",
		"Failed stores that were retried after a backoff (transient errors, a full or read-only repository); a permanent error ends the stream instead.")
	descStorageFailing = metricDesc("storage_failing_seconds",
		"Seconds the uploader has been failing to store the WAL at the head of its queue, retrying with backoff (0 while storing works); the slot holds the WAL meanwhile.")
	descStorageFull = metricDesc("storage_full",
		"1 while storing WAL fails because the repository's filesystem is full, over its disk quota or read-only (the stream waits and retries), else 0.")
	descQueue = metricDesc("queue_depth",
		"Segments, partial snapshots and history files waiting for the uploader, not counting the one being stored.")
	descQueueCap = metricDesc("queue_capacity",
		"Size of the upload queue (--queue-segments); at this depth the receiver waits for storage.")
	descReconnects = metricDesc("reconnects_total",
		"Replication connections lost and retried.")
)

// metricNames collects the names metricDesc was given.
var metricNames []string

func metricDesc(name, help string, labels ...string) *prometheus.Desc {
	metricNames = append(metricNames, MetricsPrefix+name)
	return prometheus.NewDesc(MetricsPrefix+name, help, labels, nil)
}

var allDescs = []*prometheus.Desc{descUp, descInfo, descTimeline, descReceived, descFlushed, descStored,
	descServerEnd, descLagBytes, descLagSeconds, descPartialAge, descSegments, descPartials, descStoredBytes,
	descUploadErrors, descUploadRetries, descStorageFailing, descStorageFull, descQueue, descQueueCap, descReconnects}

// NewMetrics returns the metrics of the stream on slot, in a registry of
// their own together with the Go runtime and process collectors.
func NewMetrics(slot string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), slot: slot}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		(*streamCollector)(m),
	)
	return m
}

// Registry is where the metrics live, for serving or for tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// MetricNames lists the names of the stream's own metrics (without the Go
// and process collectors'), for checking dashboards and alert rules.
func MetricNames() []string { return slices.Clone(metricNames) }

type streamCollector Metrics

func (c *streamCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

func (c *streamCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	s := c.s.Load()
	if s == nil {
		gauge(descUp, 0)
		return
	}
	now := time.Now()
	up := s.up
	tli := s.tliNow.Load()
	sysID, _ := s.sysID.Load().(string)
	received, flushed := s.receivedNow.Load(), up.flushed.Load()
	serverEnd := max(s.serverEnd.Load(), received)

	gauge(descUp, boolFloat(s.connected.Load()))
	ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1, c.slot, fmt.Sprint(tli), sysID)
	gauge(descTimeline, float64(tli))
	// Positions are unknown (absent, not 0) until the first connection, so
	// rate() over them never sees a jump from 0.
	position := func(d *prometheus.Desc, lsn uint64) {
		if lsn != 0 {
			gauge(d, float64(lsn))
		}
	}
	position(descReceived, received)
	position(descFlushed, flushed)
	position(descStored, up.segmentEnd.Load())
	position(descServerEnd, serverEnd)
	if serverEnd != 0 && flushed != 0 {
		gauge(descLagBytes, float64(serverEnd-min(flushed, serverEnd)))
	}
	lag := 0.0
	if oldest := s.lag.oldest.Load(); oldest != 0 && flushed < received {
		lag = max(now.Sub(time.Unix(0, oldest)).Seconds(), 0)
	}
	gauge(descLagSeconds, lag)
	gauge(descPartialAge, max(now.Sub(time.Unix(0, up.lastStored.Load())).Seconds(), 0))
	counter(descSegments, up.stats.SegmentsStored.Load())
	counter(descPartials, up.stats.PartialsStored.Load())
	counter(descStoredBytes, up.stats.StoredBytes.Load())
	counter(descUploadErrors, up.stats.UploadErrors.Load())
	counter(descUploadRetries, up.stats.UploadRetries.Load())
	failing := 0.0
	if since := up.failingSince.Load(); since != 0 {
		failing = max(now.Sub(time.Unix(0, since)).Seconds(), 0)
	}
	gauge(descStorageFailing, failing)
	gauge(descStorageFull, boolFloat(up.full.Load()))
	gauge(descQueue, float64(len(up.q)))
	gauge(descQueueCap, float64(cap(up.q)))
	counter(descReconnects, s.reconnects.Load())
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// lagClock remembers when received WAL arrived, so the age of the oldest
// WAL not yet durable can be published. Only the receiving goroutine calls
// received, stored and reset; scrapes read oldest.
//
// Arrivals within 100ms share one sample (the earlier time), which bounds
// the samples kept and makes lag_seconds exact to about 0.1s, on the high
// side. The receiver cannot get more than the upload queue ahead of the
// repository, so the list stays short.
type lagClock struct {
	samples []lagSample // ascending end
	oldest  atomic.Int64
}

type lagSample struct {
	end LSN
	at  int64 // unix nanoseconds
}

const lagResolution = int64(100 * time.Millisecond)

func (l *lagClock) received(end LSN, now time.Time) {
	at := now.UnixNano()
	if k := len(l.samples); k > 0 && at-l.samples[k-1].at < lagResolution {
		l.samples[k-1].end = end
		return
	}
	l.samples = append(l.samples, lagSample{end: end, at: at})
	if len(l.samples) == 1 {
		l.oldest.Store(at)
	}
}

func (l *lagClock) stored(flushed LSN) {
	i := 0
	for i < len(l.samples) && l.samples[i].end <= flushed {
		i++
	}
	if i == 0 {
		return
	}
	l.samples = slices.Delete(l.samples, 0, i)
	if len(l.samples) == 0 {
		l.oldest.Store(0)
	} else {
		l.oldest.Store(l.samples[0].at)
	}
}

func (l *lagClock) reset() {
	l.samples = l.samples[:0]
	l.oldest.Store(0)
}

// MetricsServer serves /metrics (and a small index page at /) over HTTP.
type MetricsServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan error
}

// ServeMetrics listens on addr (host:port) and serves m until Close. The
// listener is open when it returns, so a bad or busy address is an error
// here, before streaming starts.
func ServeMetrics(addr string, m *Metrics) (*MetricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry:          m.reg, // counts promhttp's own errors
		Timeout:           10 * time.Second,
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<html><head><title>walkeeper stream</title></head><body><h1>walkeeper stream</h1>"+
			"<p>slot %s</p><p><a href=\"/metrics\">metrics</a></p></body></html>\n", html.EscapeString(m.slot))
	})
	s := &MetricsServer{
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       time.Minute,
		},
		ln:   ln,
		done: make(chan error, 1),
	}
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

// Addr is the address the server listens on (useful with port 0).
func (s *MetricsServer) Addr() string { return s.ln.Addr().String() }

// Close stops the server, giving running scrapes up to five seconds.
func (s *MetricsServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if serveErr := <-s.done; !errors.Is(serveErr, http.ErrServerClosed) && err == nil {
		err = serveErr
	}
	return err
}
