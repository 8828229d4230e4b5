from jinja2.runtime import LoopContext, Macro, Markup, Namespace, TemplateNotFound, TemplateReference, TemplateRuntimeError, Undefined, escape, identity, internalcode, markup_join, missing, str_join
name = 'nginx-ollama.conf.j2'

def root(context, missing=missing):
    resolve = context.resolve_or_missing
    undefined = environment.undefined
    concat = environment.concat
    cond_expr_undefined = Undefined
    if 0: yield None
    l_0_header = resolve('header')
    l_0_balancer = resolve('balancer')
    l_0_upstream_header = resolve('upstream_header')
    try:
        t_1 = environment.filters['host_port']
    except KeyError:
        @internalcode
        def t_1(*unused):
            raise TemplateRuntimeError("No filter named 'host_port' found.")
    try:
        t_2 = environment.filters['nginx_value']
    except KeyError:
        @internalcode
        def t_2(*unused):
            raise TemplateRuntimeError("No filter named 'nginx_value' found.")
    pass
    yield str((undefined(name='header') if l_0_header is missing else l_0_header))
    yield '\n# One public Ollama endpoint over the per-GPU replicas: least_conn sends each request to the\n# replica with the fewest open requests; streaming responses pass through unbuffered.\nupstream provision_ollama {\n    least_conn;\n'
    for l_1_upstream in environment.getattr((undefined(name='balancer') if l_0_balancer is missing else l_0_balancer), 'upstreams'):
        _loop_vars = {}
        pass
        yield '    server '
        yield str(t_2(t_1(l_1_upstream)))
        yield ';\n'
    l_1_upstream = missing
    yield '    keepalive 16;\n}\n\nserver {\n    listen '
    yield str(t_2(t_1((environment.getattr((undefined(name='balancer') if l_0_balancer is missing else l_0_balancer), 'address'), environment.getattr((undefined(name='balancer') if l_0_balancer is missing else l_0_balancer), 'port')))))
    yield ';\n\n    # Chat requests may carry base64 images; the default 1m would refuse them.\n    client_max_body_size 64m;\n\n    location / {\n        proxy_pass http://provision_ollama;\n        proxy_http_version 1.1;\n        proxy_set_header Connection "";\n        # The replicas listen on loopback, where Ollama answers 403 to a Host header that is\n        # not local (the default here would be the upstream\'s name).\n        proxy_set_header Host localhost;\n        proxy_buffering off;\n        proxy_cache off;\n        proxy_request_buffering off;\n        proxy_read_timeout 600s;\n        proxy_send_timeout 600s;\n        # Which replica answered ($upstream_addr: every one tried, comma-separated, the last\n        # answered): verify sends requests through here until each replica has answered one.\n        add_header '
    yield str(t_2((undefined(name='upstream_header') if l_0_upstream_header is missing else l_0_upstream_header)))
    yield ' $upstream_addr always;\n    }\n}\n'

blocks = {}
debug_info = '1=26&6=28&7=32&13=36&32=38'