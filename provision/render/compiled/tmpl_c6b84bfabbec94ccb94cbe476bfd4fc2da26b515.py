from jinja2.runtime import LoopContext, Macro, Markup, Namespace, TemplateNotFound, TemplateReference, TemplateRuntimeError, Undefined, escape, identity, internalcode, markup_join, missing, str_join
name = 'ollama-dropin.conf.j2'

def root(context, missing=missing):
    resolve = context.resolve_or_missing
    undefined = environment.undefined
    concat = environment.concat
    cond_expr_undefined = Undefined
    if 0: yield None
    l_0_header = resolve('header')
    l_0_power_unit = resolve('power_unit')
    l_0_instance = resolve('instance')
    try:
        t_1 = environment.filters['systemd_env']
    except KeyError:
        @internalcode
        def t_1(*unused):
            raise TemplateRuntimeError("No filter named 'systemd_env' found.")
    try:
        t_2 = environment.filters['unit_name']
    except KeyError:
        @internalcode
        def t_2(*unused):
            raise TemplateRuntimeError("No filter named 'unit_name' found.")
    pass
    yield str((undefined(name='header') if l_0_header is missing else l_0_header))
    yield "\n# Settings for the stock ollama.service (the unit Ollama's installer writes).\n"
    if (undefined(name='power_unit') if l_0_power_unit is missing else l_0_power_unit):
        pass
        yield '# After= only orders: a disabled power unit stays off (a Wants= here would start it anyway).\n[Unit]\nAfter='
        yield str(t_2((undefined(name='power_unit') if l_0_power_unit is missing else l_0_power_unit)))
        yield '\n'
    yield '\n[Service]\n'
    for l_1_pair in environment.getattr((undefined(name='instance') if l_0_instance is missing else l_0_instance), 'env'):
        _loop_vars = {}
        pass
        yield 'Environment='
        yield str(t_1(l_1_pair))
        yield '\n'
    l_1_pair = missing

blocks = {}
debug_info = '1=26&3=28&6=31&10=34&11=38'