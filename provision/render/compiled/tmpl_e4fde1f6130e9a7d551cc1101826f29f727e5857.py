from jinja2.runtime import LoopContext, Macro, Markup, Namespace, TemplateNotFound, TemplateReference, TemplateRuntimeError, Undefined, escape, identity, internalcode, markup_join, missing, str_join
name = 'gpu-power-limits-resume.service.j2'

def root(context, missing=missing):
    resolve = context.resolve_or_missing
    undefined = environment.undefined
    concat = environment.concat
    cond_expr_undefined = Undefined
    if 0: yield None
    l_0_header = resolve('header')
    l_0_power_unit = resolve('power_unit')
    l_0_sleep_targets = resolve('sleep_targets')
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
        t_3 = environment.filters['unit_name']
    except KeyError:
        @internalcode
        def t_3(*unused):
            raise TemplateRuntimeError("No filter named 'unit_name' found.")
    pass
    yield str((undefined(name='header') if l_0_header is missing else l_0_header))
    yield '\n# amdgpu returns every card to its default power cap on suspend and resume: after waking up,\n# this oneshot restarts '
    yield str((undefined(name='power_unit') if l_0_power_unit is missing else l_0_power_unit))
    yield ', which sets the planned caps again;\n# try-restart only when it is active, so a power unit that was disabled or stopped stays off.\n[Unit]\nDescription=GPU power limits again after resume\nAfter='
    yield str(t_1(context.eval_ctx, t_2(context, (undefined(name='sleep_targets') if l_0_sleep_targets is missing else l_0_sleep_targets), 'unit_name'), ' '))
    yield '\n\n[Service]\nType=oneshot\nExecStart=/bin/systemctl try-restart '
    yield str(t_3((undefined(name='power_unit') if l_0_power_unit is missing else l_0_power_unit)))
    yield '\n\n[Install]\nWantedBy='
    yield str(t_1(context.eval_ctx, t_2(context, (undefined(name='sleep_targets') if l_0_sleep_targets is missing else l_0_sleep_targets), 'unit_name'), ' '))
    yield '\n'

blocks = {}
debug_info = '1=32&3=34&7=36&11=38&14=40'