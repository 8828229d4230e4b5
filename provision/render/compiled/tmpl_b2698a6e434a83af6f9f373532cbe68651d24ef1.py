from jinja2.runtime import LoopContext, Macro, Markup, Namespace, TemplateNotFound, TemplateReference, TemplateRuntimeError, Undefined, escape, identity, internalcode, markup_join, missing, str_join
name = 'ollama@.service.j2'

def root(context, missing=missing):
    resolve = context.resolve_or_missing
    undefined = environment.undefined
    concat = environment.concat
    cond_expr_undefined = Undefined
    if 0: yield None
    l_0_header = resolve('header')
    l_0_env_dir = resolve('env_dir')
    l_0_power_unit = resolve('power_unit')
    l_0_ollama_bin = resolve('ollama_bin')
    try:
        t_1 = environment.filters['systemd_arg']
    except KeyError:
        @internalcode
        def t_1(*unused):
            raise TemplateRuntimeError("No filter named 'systemd_arg' found.")
    try:
        t_2 = environment.filters['systemd_text']
    except KeyError:
        @internalcode
        def t_2(*unused):
            raise TemplateRuntimeError("No filter named 'systemd_text' found.")
    try:
        t_3 = environment.filters['unit_name']
    except KeyError:
        @internalcode
        def t_3(*unused):
            raise TemplateRuntimeError("No filter named 'unit_name' found.")
    pass
    yield str((undefined(name='header') if l_0_header is missing else l_0_header))
    yield '\n# One Ollama per GPU: instance N reads its GPU (by UUID) and port from\n# '
    yield str(t_2((undefined(name='env_dir') if l_0_env_dir is missing else l_0_env_dir)))
    yield '/N.env. Models are stored once, in the store named there; nginx\n# balances the public port over the instances.\n[Unit]\nDescription=Ollama replica %i\n'
    if (undefined(name='power_unit') if l_0_power_unit is missing else l_0_power_unit):
        pass
        yield '# After= only orders: the power unit runs at boot when it is enabled (its own WantedBy=), and a\n# `systemctl disable` of it stays in force (a Wants= here would start it anyway).\nAfter=network-online.target '
        yield str(t_3((undefined(name='power_unit') if l_0_power_unit is missing else l_0_power_unit)))
        yield '\n'
    else:
        pass
        yield 'After=network-online.target\n'
    yield '\n[Service]\nExecStart='
    yield str(t_1((undefined(name='ollama_bin') if l_0_ollama_bin is missing else l_0_ollama_bin)))
    yield ' serve\nUser=ollama\nGroup=ollama\nEnvironmentFile='
    yield str(t_2((undefined(name='env_dir') if l_0_env_dir is missing else l_0_env_dir)))
    yield '/%i.env\nRestart=always\nRestartSec=3\n\n[Install]\nWantedBy=multi-user.target\n'

blocks = {}
debug_info = '1=33&3=35&7=37&10=40&16=46&19=48'