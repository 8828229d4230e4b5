from jinja2.runtime import LoopContext, Macro, Markup, Namespace, TemplateNotFound, TemplateReference, TemplateRuntimeError, Undefined, escape, identity, internalcode, markup_join, missing, str_join
name = 'llama-server.service.j2'

def root(context, missing=missing):
    resolve = context.resolve_or_missing
    undefined = environment.undefined
    concat = environment.concat
    cond_expr_undefined = Undefined
    if 0: yield None
    l_0_header = resolve('header')
    l_0_instance = resolve('instance')
    l_0_power_unit = resolve('power_unit')
    l_0_llama_server_bin = resolve('llama_server_bin')
    try:
        t_1 = environment.filters['join']
    except KeyError:
        @internalcode
        def t_1(*unused):
            raise TemplateRuntimeError("No filter named 'join' found.")
    try:
        t_2 = environment.filters['map']
    except KeyError:
        @internalcode
        def t_2(*unused):
            raise TemplateRuntimeError("No filter named 'map' found.")
    try:
        t_3 = environment.filters['systemd_arg']
    except KeyError:
        @internalcode
        def t_3(*unused):
            raise TemplateRuntimeError("No filter named 'systemd_arg' found.")
    try:
        t_4 = environment.filters['systemd_env']
    except KeyError:
        @internalcode
        def t_4(*unused):
            raise TemplateRuntimeError("No filter named 'systemd_env' found.")
    try:
        t_5 = environment.filters['systemd_text']
    except KeyError:
        @internalcode
        def t_5(*unused):
            raise TemplateRuntimeError("No filter named 'systemd_text' found.")
    try:
        t_6 = environment.filters['unit_name']
    except KeyError:
        @internalcode
        def t_6(*unused):
            raise TemplateRuntimeError("No filter named 'unit_name' found.")
    pass
    yield str((undefined(name='header') if l_0_header is missing else l_0_header))
    yield '\n[Unit]\nDescription=llama-server '
    yield str(t_5(t_1(context.eval_ctx, environment.getattr((undefined(name='instance') if l_0_instance is missing else l_0_instance), 'models'), ', ')))
    yield '\n'
    if (undefined(name='power_unit') if l_0_power_unit is missing else l_0_power_unit):
        pass
        yield '# After= only orders: the power unit runs at boot when it is enabled (its own WantedBy=), and a\n# `systemctl disable` of it stays in force (a Wants= here would start it anyway).\nAfter=network-online.target '
        yield str(t_6((undefined(name='power_unit') if l_0_power_unit is missing else l_0_power_unit)))
        yield '\n'
    else:
        pass
        yield 'After=network-online.target\n'
    yield '\n[Service]\n'
    for l_1_pair in environment.getattr((undefined(name='instance') if l_0_instance is missing else l_0_instance), 'env'):
        _loop_vars = {}
        pass
        yield 'Environment='
        yield str(t_4(l_1_pair))
        yield '\n'
    l_1_pair = missing
    yield 'ExecStart='
    yield str(t_3((undefined(name='llama_server_bin') if l_0_llama_server_bin is missing else l_0_llama_server_bin)))
    yield ' '
    yield str(t_1(context.eval_ctx, t_2(context, environment.getattr((undefined(name='instance') if l_0_instance is missing else l_0_instance), 'args'), 'systemd_arg'), ' '))
    yield '\n# A transient user: no account to create, and the sandbox it implies (read-only system,\n# private /tmp). The GGUF file must be readable by other users.\nDynamicUser=yes\nRestart=on-failure\nRestartSec=3\n\n[Install]\nWantedBy=multi-user.target\n'

blocks = {}
debug_info = '1=51&3=53&4=55&7=58&13=64&14=68&16=72'