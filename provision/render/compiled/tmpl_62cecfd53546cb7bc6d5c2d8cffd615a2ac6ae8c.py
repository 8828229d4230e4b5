from jinja2.runtime import LoopContext, Macro, Markup, Namespace, TemplateNotFound, TemplateReference, TemplateRuntimeError, Undefined, escape, identity, internalcode, markup_join, missing, str_join
name = 'gpu-power-limits.service.j2'

def root(context, missing=missing):
    resolve = context.resolve_or_missing
    undefined = environment.undefined
    concat = environment.concat
    cond_expr_undefined = Undefined
    if 0: yield None
    l_0_header = resolve('header')
    l_0_nvidia = resolve('nvidia')
    l_0_power = resolve('power')
    l_0_amd = resolve('amd')
    l_0_amd_script = resolve('amd_script')
    l_0_before = resolve('before')
    l_0_nvidia_smi = resolve('nvidia_smi')
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
        t_4 = environment.filters['systemd_text']
    except KeyError:
        @internalcode
        def t_4(*unused):
            raise TemplateRuntimeError("No filter named 'systemd_text' found.")
    try:
        t_5 = environment.filters['watts']
    except KeyError:
        @internalcode
        def t_5(*unused):
            raise TemplateRuntimeError("No filter named 'watts' found.")
    pass
    yield str((undefined(name='header') if l_0_header is missing else l_0_header))
    yield '\n'
    if (undefined(name='nvidia') if l_0_nvidia is missing else l_0_nvidia):
        pass
        yield "# Power limits reset at every boot: this oneshot applies them after nvidia-persistenced and\n# before the inference services. Stopping it restores each GPU's default limit (nvidia-smi has\n# no reset command). Limits as planned:\n"
    else:
        pass
        yield "# Power caps reset at every boot: this oneshot applies them before the inference services.\n# Stopping it restores each GPU's default cap. Caps as planned:\n"
    for l_1_p in (undefined(name='power') if l_0_power is missing else l_0_power):
        _loop_vars = {}
        pass
        if environment.getattr(l_1_p, 'default_w'):
            pass
            yield '#   '
            yield str(t_4(environment.getattr(l_1_p, 'uuid')))
            yield ': '
            yield str(t_5(environment.getattr(l_1_p, 'target_w')))
            yield ' W (default '
            yield str(t_5(environment.getattr(l_1_p, 'default_w')))
            yield ' W)\n'
        else:
            pass
            yield '#   '
            yield str(t_4(environment.getattr(l_1_p, 'uuid')))
            yield ': '
            yield str(t_5(environment.getattr(l_1_p, 'target_w')))
            yield ' W (default unknown: stopping leaves it set)\n'
    l_1_p = missing
    if (undefined(name='amd') if l_0_amd is missing else l_0_amd):
        pass
        yield '# AMD cards: '
        yield str(t_4((undefined(name='amd_script') if l_0_amd_script is missing else l_0_amd_script)))
        yield " writes the cap to the card's hwmon in\n# microwatts and reads it back; stopping writes power1_cap_default back.\n"
    yield '[Unit]\nDescription=GPU power limits\n'
    if (undefined(name='nvidia') if l_0_nvidia is missing else l_0_nvidia):
        pass
        yield 'After=nvidia-persistenced.service\n'
    if (undefined(name='before') if l_0_before is missing else l_0_before):
        pass
        yield 'Before='
        yield str(t_1(context.eval_ctx, t_2(context, (undefined(name='before') if l_0_before is missing else l_0_before), 'unit_name'), ' '))
        yield '\n'
    yield '\n[Service]\nType=oneshot\nRemainAfterExit=yes\n'
    if (undefined(name='nvidia') if l_0_nvidia is missing else l_0_nvidia):
        pass
        yield 'ExecStart='
        yield str(t_3((undefined(name='nvidia_smi') if l_0_nvidia_smi is missing else l_0_nvidia_smi)))
        yield ' -pm 1\n'
    for l_1_p in (undefined(name='power') if l_0_power is missing else l_0_power):
        _loop_vars = {}
        pass
        if environment.getattr(l_1_p, 'device'):
            pass
            yield 'ExecStart=/bin/sh '
            yield str(t_3((undefined(name='amd_script') if l_0_amd_script is missing else l_0_amd_script)))
            yield ' '
            yield str(t_3(environment.getattr(l_1_p, 'device')))
            yield ' '
            yield str(t_5(environment.getattr(l_1_p, 'target_w')))
            yield '\n'
        else:
            pass
            yield 'ExecStart='
            yield str(t_3((undefined(name='nvidia_smi') if l_0_nvidia_smi is missing else l_0_nvidia_smi)))
            yield ' -i '
            yield str(t_3(environment.getattr(l_1_p, 'uuid')))
            yield ' -pl '
            yield str(t_5(environment.getattr(l_1_p, 'target_w')))
            yield '\n'
    l_1_p = missing
    for l_1_p in (undefined(name='power') if l_0_power is missing else l_0_power):
        _loop_vars = {}
        pass
        if environment.getattr(l_1_p, 'device'):
            pass
            yield 'ExecStop=/bin/sh '
            yield str(t_3((undefined(name='amd_script') if l_0_amd_script is missing else l_0_amd_script)))
            yield ' '
            yield str(t_3(environment.getattr(l_1_p, 'device')))
            yield ' default\n'
        elif environment.getattr(l_1_p, 'default_w'):
            pass
            yield 'ExecStop='
            yield str(t_3((undefined(name='nvidia_smi') if l_0_nvidia_smi is missing else l_0_nvidia_smi)))
            yield ' -i '
            yield str(t_3(environment.getattr(l_1_p, 'uuid')))
            yield ' -pl '
            yield str(t_5(environment.getattr(l_1_p, 'default_w')))
            yield '\n'
    l_1_p = missing
    yield '\n[Install]\nWantedBy=multi-user.target\n'

blocks = {}
debug_info = '1=48&2=50&10=56&11=59&12=62&14=71&17=76&18=79&23=82&26=85&27=88&33=91&34=94&36=96&37=99&38=102&40=111&43=118&44=121&45=124&46=128&47=131'