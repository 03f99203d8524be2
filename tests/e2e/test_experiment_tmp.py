import time
from tests.e2e.test_nginx import behind_nginx, wait_for  # noqa

def test_exp(behind_nginx, ws_client):
    stack = behind_nginx(read_timeout="2s", WS_PING_INTERVAL_S="30")
    c = ws_client(stack.nginx.ws_url)
    wait_for(lambda: c.messages, 10, "hello")
    t = time.monotonic()
    for i in range(6):
        if c.close_code is not None: break
        try: c.ws.pong(b"")
        except Exception as e: print("send failed", e); break
        time.sleep(1)
    c.wait_closed(0.5)
    print("client-pong-only: close_code", c.close_code, "after", time.monotonic() - t, "msgs", len(c.messages))
    print(stack.nginx.access_log_text())
