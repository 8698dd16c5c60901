-- The trivial handler's input, POSTed to the URL's path on every request.
wrk.method = "POST"
wrk.body = '{"name":"World"}'
wrk.headers["Content-Type"] = "application/json"
