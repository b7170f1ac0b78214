-- wrk script for bench/run.sh: prints one JSON line with the run's totals at the end.
-- summary.errors.status counts responses that were not 2xx/3xx.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"bytes":%d,"duration_us":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"non_2xx_3xx":%d,' ..
    '"latency_p50_ms":%.3f,"latency_p99_ms":%.3f}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write,
    e.timeout, e.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
